"""Fake torch_npu that is installed but cannot load CANN (like torch_npu without CANN)."""

raise ImportError("libhccl.so: cannot open shared object file: No such file or directory")
