"""Where every route into the op reports a call while ``fia_kit.capture`` records (nothing happens otherwise).

The kit's reference entry points, the patched torch_npu / TorchAir attributes and the capture's dispatch mode all
wrap the op in ``observed(...)``. Only the outermost observed call of a thread is reported: a torch_npu function
that dispatches to ``torch.ops.npu.*``, or a look-alike op whose kernel is the reference, is one call, not two.
Under ``torch.compile`` tracing (``torch.compiler.is_compiling()``) nothing is reported from Python wrappers.
"""

from __future__ import annotations

import functools
import threading
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from typing import Any, Protocol

import torch


class Observer(Protocol):
    """What ``fia_kit.capture`` installs: told of a call before it runs, and of its exception if it raises."""

    def begin(self, entry: str, form: str, kind: str, graph: bool, arguments: Mapping[str, Any]) -> Any: ...

    def failed(self, handle: Any, error: BaseException) -> None: ...


OBSERVERS: list[Observer] = []
_state = threading.local()


def watching() -> bool:
    """Whether a call made now would be reported (an observer is installed, not tracing, not nested)."""
    if torch.compiler.is_compiling() or not OBSERVERS:
        return False
    return not getattr(_state, "depth", 0)


@contextmanager
def observed(entry: str, form: str, kind: str, graph: bool, arguments: Mapping[str, Any]) -> Iterator[None]:
    """Report one call of the op to the innermost observer, unless it is nested in an already reported one.

    Args:
        entry: how the op was reached, e.g. "torch_npu.npu_fused_infer_attention_score".
        form: "v1", "v2" or "update" (npu_attention_update). kind: "op", "out", "get_max_workspace" or "infer_output".
        graph: whether the route is TorchAir's (graph mode: lengths as tensors).
        arguments: argument name -> value as passed (positional ones named as the schema names them).
    """
    if not watching():
        yield
        return
    observer = OBSERVERS[-1]
    _state.depth = 1
    try:
        handle = observer.begin(entry, form, kind, graph, arguments)
        try:
            yield
        except BaseException as error:
            observer.failed(handle, error)
            raise
    finally:
        _state.depth = 0


def out_arguments(kwargs: Mapping[str, Any]) -> dict[str, Any]:
    """``.out``'s keywords with torch_npu's Python spelling ``out=[attention_out, softmax_lse]`` split by name."""
    out = kwargs.get("out")
    if out is None or isinstance(out, torch.Tensor):
        return dict(kwargs)
    rest = {n: v for n, v in kwargs.items() if n != "out"}
    return {**rest, **dict(zip(("attention_out", "softmax_lse"), out, strict=False))}


def reported(form: str, kind: str) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Decorate one of the kit's entry points (e.g. a reference companion) so that its calls are reported."""
    positional = ("query", "value") if kind == "infer_output" else ("query", "key", "value")

    def decorate(fn: Callable[..., Any]) -> Callable[..., Any]:
        entry = f"{fn.__module__}.{fn.__name__}"

        @functools.wraps(fn)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            if not watching():
                return fn(*args, **kwargs)
            named = {**dict(zip(positional, args, strict=False)),
                     **(out_arguments(kwargs) if kind == "out" else kwargs)}
            with observed(entry, form, kind, False, named):
                return fn(*args, **kwargs)
        return wrapper
    return decorate
