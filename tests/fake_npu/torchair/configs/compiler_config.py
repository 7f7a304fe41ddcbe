"""Stand-in ``torchair.configs.compiler_config.CompilerConfig``: the attributes the kit sets, nothing else."""

from __future__ import annotations

from types import SimpleNamespace


class CompilerConfig:
    """mode, experimental_config.tiling_schedule_optimize and debug.graph_dump.type, with TorchAir's defaults."""

    def __init__(self) -> None:
        self.mode = "max-autotune"
        self.experimental_config = SimpleNamespace(tiling_schedule_optimize=False)
        self.debug = SimpleNamespace(graph_dump=SimpleNamespace(type=None))
