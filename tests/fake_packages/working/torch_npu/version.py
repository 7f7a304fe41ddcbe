"""Version facts of the fake torch_npu."""

__version__ = "2.13.0.fake"
cann = "8.3.RC1.fake"
