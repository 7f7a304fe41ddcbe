"""Record every call of the op while a model runs, and load the calls back to replay, lint and explore them.

    with fia_kit.capture("calls.fiacap"):          # tensors="auto": small tensors kept, large ones as stats
        model(tokens)                              # however the model reaches the op
    calls = fia_kit.load_capture("calls.fiacap")   # a Capture: a sequence of CapturedCall
    print(calls.table())                           # one row per distinct call, with its count
    fia_kit.run(calls[0]); fia_kit.lint(calls[0]); Case.from_call(calls[0])

Routes recorded (each call once, however nested): ``torch_npu.npu_fused_infer_attention_score[_v2]`` and its
companions (module attributes patched while capturing), ``torch.ops.npu.*`` / ``torch.ops.air.*`` including
``.out``, ``_get_max_workspace`` and ``_infer_output`` (a TorchDispatchMode, so ops fetched before the capture began
are seen too), ``tng.ops.*`` (``torchair.ops`` attributes), the kit's reference functions (a hook inside them, so a
name imported before the capture is seen) and the kit's look-alike ops ``torch.ops.fia_kit.*``. The context-parallel
merge ``torch_npu.npu_attention_update`` (its ``torch.ops`` overloads, and the kit's twin ``fia_kit.npu_attention_update``)
is recorded too, as form "update".

Compiled graphs: a torch.compile graph whose nodes run through the dispatcher is recorded when it runs; a TorchAir
GE graph runs on the device and is seen at trace time only, as metadata only (``torchair.get_npu_backend`` is
wrapped to record each FIA node of a graph it compiles, from fake tensors), never per replay. The file format is in
docs/capture.md.
"""

from __future__ import annotations

import contextlib
import datetime
import functools
import hashlib
import json
import math
import os
import re
import sys
import threading
import time
import warnings
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import torch
from torch.utils._python_dispatch import TorchDispatchMode

from . import observe
from .call import FIACall, parse_call
from .errors import FIAArgumentError
from .masks import COMPRESSED_MASK_SIZE, compressed_causal_mask, is_compressed_causal_mask
from .signatures import LENGTH_PARAMETERS

__all__ = ["capture", "load_capture", "seal", "Capture", "CapturedCall", "CaptureFileError", "Recorder"]

FORMAT = "fia-kit-capture"
FORMAT_VERSION = 1
METADATA_KEY = "fia_kit.capture"
Policy = Literal["all", "auto"]

# Op names (after the namespace) the dispatch mode records -> (form, kind). "out" comes from the overload name.
_OP_NAME = re.compile(r"^(?P<air>air_)?(?P<companion_prefix>_)?npu_fused_infer_attention_score(?P<v2>_v2)?"
                      r"(?P<suffix>_get_max_workspace|_infer_output)?$")
# Module attributes patched on torch_npu and on torchair.ops while capturing.
_ATTRIBUTES = ("npu_fused_infer_attention_score", "npu_fused_infer_attention_score_v2",
               "_npu_fused_infer_attention_score_get_max_workspace",
               "_npu_fused_infer_attention_score_v2_get_max_workspace",
               "_npu_fused_infer_attention_score_infer_output", "_npu_fused_infer_attention_score_v2_infer_output")
# Arguments whose contents decide what the op does (always kept, part of the signature).
STRUCTURE = frozenset({"atten_mask", "block_table", "query_padding_size", "kv_padding_size", *LENGTH_PARAMETERS})
# Output arguments of ``.out`` (never stored: they are written by the op).
OUTPUTS = frozenset({"workspace", "attention_out", "softmax_lse"})
STRUCTURE_MAX_BYTES = 64 << 20
# The SHA-256 of the whole file, computed with this metadata value all zeros and then written over it (load_capture
# recomputes it the same way): any changed byte, in the tensors, the JSON index or the header, is detected.
DIGEST_KEY = "fia_kit.capture.sha256"
_UNSEALED = "0" * 64
_HEADER_MAX_BYTES = 100 << 20  # safetensors' own limit on the JSON header
# safetensors' dtype codes and their item sizes (bytes), to check each declared tensor against the file's size.
_ITEM_BYTES = {"BOOL": 1, "U8": 1, "I8": 1, "F8_E4M3": 1, "F8_E5M2": 1, "I16": 2, "U16": 2, "F16": 2, "BF16": 2,
               "I32": 4, "U32": 4, "F32": 4, "I64": 8, "U64": 8, "F64": 8, "C64": 8}


class CaptureFileError(ValueError):
    """A capture file is missing, truncated, corrupt or not a fia-kit capture.

    Attributes:
        path: the file. problem: what is wrong with it.
    """

    def __init__(self, path: str | os.PathLike, problem: str) -> None:
        self.path = str(path)
        self.problem = problem
        super().__init__(f"{self.path}: {problem}")


# ------------------------------------------------------------------------------------------------ describing

def _is_fake(t: torch.Tensor) -> bool:
    from torch._subclasses.fake_tensor import is_fake

    return t.device.type == "meta" or is_fake(t)


def _dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


def _as_int_list(value: Any) -> list[int] | None:
    """An int sequence (list, tuple, numpy integer array, items 0-d integer tensors) as ints, else None."""
    if isinstance(value, (str, bytes, torch.Tensor)) or not hasattr(value, "__iter__") or not hasattr(value, "__len__"):
        return None
    out = []
    for v in value:
        if isinstance(v, torch.Tensor) and v.numel() == 1 and not v.is_floating_point() and not _is_fake(v):
            v = v.item()
        if isinstance(v, bool) or not hasattr(v, "__index__"):
            return None
        out.append(int(v))
    return out


def _container(value: Any) -> str:
    if isinstance(value, tuple):
        return "tuple"
    if isinstance(value, list):
        return "list"
    return "numpy" if type(value).__module__.startswith("numpy") else "list"


def _float_json(x: float) -> float | str:
    return x if math.isfinite(x) else repr(x)


def _json_float(x: float | str) -> float:
    return float(x)


def _stats(t: torch.Tensor) -> dict[str, Any]:
    """min / max / mean / std (float64, over finite values) and the count of non-finite values."""
    if t.numel() == 0:
        return {"min": 0.0, "max": 0.0, "mean": 0.0, "std": 0.0, "nonfinite": 0}
    x = t.detach()
    if x.dtype == torch.bool:
        return {"min": float(bool(x.all())), "max": float(bool(x.any())), "mean": float(x.double().mean()),
                "std": 0.0, "nonfinite": 0}
    x = x.to(torch.float64)
    finite = torch.isfinite(x)
    good = x[finite]
    nonfinite = int(x.numel() - good.numel())
    if good.numel() == 0:
        return {"min": 0.0, "max": 0.0, "mean": 0.0, "std": 0.0, "nonfinite": nonfinite}
    std = float(good.std()) if good.numel() > 1 else 0.0
    return {"min": float(good.min()), "max": float(good.max()), "mean": float(good.mean()), "std": std,
            "nonfinite": nonfinite}


def _tensor_meta(t: torch.Tensor) -> dict[str, Any]:
    return {"kind": "tensor", "shape": list(t.shape), "dtype": _dtype_name(t.dtype), "stride": list(t.stride()),
            "storage_offset": int(t.storage_offset()), "device": str(t.device)}


def _describe_meta(name: str, value: Any) -> dict[str, Any]:
    """JSON description of one argument without its tensor data (what the signature is made of)."""
    if value is None:
        return {"kind": "none"}
    if isinstance(value, bool):
        return {"kind": "bool", "value": value}
    if isinstance(value, int):
        return {"kind": "int", "value": int(value)}
    if isinstance(value, float):
        return {"kind": "float", "value": _float_json(value)}
    if isinstance(value, str):
        return {"kind": "str", "value": value}
    if isinstance(value, torch.Tensor):
        meta = _tensor_meta(value)
        if name in OUTPUTS:
            meta["role"] = "output"
        elif _is_fake(value):
            meta["role"] = "fake"
        elif name in STRUCTURE and value.numel() * value.element_size() <= STRUCTURE_MAX_BYTES:
            meta["content"] = _digest(value)
        return meta
    ints = _as_int_list(value)
    if ints is not None:
        return {"kind": "ints", "container": _container(value), "value": ints}
    return {"kind": "unsupported", "type": type(value).__name__, "repr": repr(value)[:200]}


def _digest(t: torch.Tensor) -> str:
    """Content address of a tensor: sha256 over dtype, shape and the contiguous bytes (first 32 hex digits)."""
    cpu = t.detach().to("cpu").contiguous()
    h = hashlib.sha256(f"{_dtype_name(cpu.dtype)}{tuple(cpu.shape)}".encode())
    h.update(cpu.reshape(-1).view(torch.uint8).numpy().tobytes() if cpu.numel() else b"")
    return h.hexdigest()[:32]


def _signature(entry: str, kind: str, arguments: Mapping[str, dict[str, Any]]) -> str:
    text = json.dumps([entry, kind, arguments], sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:24]


# ------------------------------------------------------------------------------------------------ recording

@dataclass
class _Distinct:
    record: dict[str, Any]


@dataclass
class Recorder:
    """The live side of ``capture``: records calls, deduplicates them and writes the file atomically.

    Attributes:
        path: the capture file. tensors: "all" or "auto". max_tensor_bytes: with "auto", float tensors larger than
            this are left out (shape, dtype, strides and stats kept). max_total_bytes: tensor data kept in all,
            beyond which further tensors are left out. flush_seconds: at most this long between a change and
            the file's rewrite (0: after every new distinct call); the file is also written on exit.
        total: calls seen; unrecorded: calls the recorder failed to describe (a warning says why).
    """

    path: Path
    tensors: Policy = "auto"
    max_tensor_bytes: int = 1 << 20
    max_total_bytes: int = 256 << 20
    flush_seconds: float = 1.0
    total: int = 0
    unrecorded: int = 0
    _calls: dict[str, _Distinct] = field(default_factory=dict)
    _blobs: dict[str, torch.Tensor] = field(default_factory=dict)
    _stored_bytes: int = 0
    _dirty: bool = False
    _last_write: float = 0.0
    _lock: threading.RLock = field(default_factory=threading.RLock)
    _timer: threading.Timer | None = None

    @property
    def distinct(self) -> int:
        return len(self._calls)

    @property
    def left_out(self) -> int:
        """Tensors of the distinct calls whose data was left out (replay regenerates them)."""
        return sum(1 for d in self._calls.values() for a in d.record["arguments"].values()
                   if a.get("kind") == "tensor" and a.get("data") is None and a.get("role") != "output"
                   and a.get("template") is None)

    # -- Observer ---------------------------------------------------------------------------------------------
    def begin(self, entry: str, form: str, kind: str, graph: bool, arguments: Mapping[str, Any]) -> str | None:
        try:
            return self._begin(entry, form, kind, graph, arguments)
        except Exception as exc:  # never break the model being captured
            self.unrecorded += 1
            warnings.warn(f"fia_kit.capture could not record a call of {entry}: {type(exc).__name__}: {exc}",
                          RuntimeWarning, stacklevel=4)
            return None

    def failed(self, handle: str | None, error: BaseException) -> None:
        with self._lock:
            distinct = self._calls.get(handle) if handle else None
            if distinct is not None and distinct.record["error"] is None:
                distinct.record["error"] = f"{type(error).__name__}: {error}"[:2000]
                self._dirty = True
                self._maybe_write(force=self.flush_seconds == 0)

    # -- internals ----------------------------------------------------------------------------------------
    def _begin(self, entry: str, form: str, kind: str, graph: bool, arguments: Mapping[str, Any]) -> str:
        metas = {name: _describe_meta(name, value) for name, value in arguments.items()}
        signature = _signature(entry, kind, metas)
        with self._lock:
            self.total += 1
            if signature in self._calls:
                self._calls[signature].record["count"] += 1
                self._dirty = True
                self._maybe_write(force=False)
                return signature
            described = {name: self._store(name, arguments[name], meta) for name, meta in metas.items()}
            self._calls[signature] = _Distinct({
                "entry": entry, "form": form, "kind": kind, "graph": bool(graph), "count": 1,
                "signature": signature, "error": None, "arguments": described})
            self._dirty = True
            self._maybe_write(force=self.flush_seconds == 0)
            return signature

    def _store(self, name: str, value: Any, meta: dict[str, Any]) -> dict[str, Any]:
        """The argument's description with its data key (kept) or stats (left out) for tensors."""
        if meta["kind"] != "tensor" or meta.get("role") in ("output", "fake"):
            return dict(meta, data=None) if meta["kind"] == "tensor" else meta
        out = dict(meta)
        t: torch.Tensor = value
        nbytes = t.numel() * t.element_size()
        if name == "atten_mask" and tuple(t.shape[-2:]) == (COMPRESSED_MASK_SIZE,) * 2 \
                and t.dtype in (torch.bool, torch.int8, torch.uint8) and is_compressed_causal_mask(t):
            return dict(out, data=None, template="compressed_causal_mask")
        keep = name in STRUCTURE or self.tensors == "all" or nbytes <= self.max_tensor_bytes
        if keep and name in STRUCTURE and nbytes > STRUCTURE_MAX_BYTES:
            keep = False
        if keep:
            key = meta.get("content") or _digest(t)
            if key not in self._blobs:
                if self.tensors != "all" and self._stored_bytes + nbytes > self.max_total_bytes:
                    keep = False
                else:
                    self._blobs[key] = t.detach().to("cpu").contiguous().clone()
                    self._stored_bytes += nbytes
            if keep:
                return dict(out, data=key)
        return dict(out, data=None, stats=_stats(t))

    def _maybe_write(self, force: bool) -> None:
        """Write now when forced or ``flush_seconds`` have passed; else make sure a timer writes it then."""
        wait = self.flush_seconds - (time.monotonic() - self._last_write)
        if force or wait <= 0:
            self.write()
        elif self._timer is None:
            self._timer = threading.Timer(wait, self._write_if_dirty)
            self._timer.daemon = True
            self._timer.start()

    def _write_if_dirty(self) -> None:
        with self._lock:
            self._timer = None
            if self._dirty:
                try:
                    self.write()
                except Exception as exc:  # a background write must not raise into nowhere
                    warnings.warn(f"fia_kit.capture could not write {self.path}: {exc}", RuntimeWarning,
                                  stacklevel=1)

    def close(self) -> None:
        """Stop the timer and write the file a last time."""
        with self._lock:
            if self._timer is not None:
                self._timer.cancel()
                self._timer = None
            self.write()

    def index(self) -> dict[str, Any]:
        """The JSON index written into the file's safetensors metadata."""
        from . import __version__

        with self._lock:
            calls = [json.loads(json.dumps(d.record)) for d in self._calls.values()]
            return {"format": FORMAT, "version": FORMAT_VERSION,
                    "written": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
                    "fia_kit": __version__, "torch": torch.__version__, "tensors": self.tensors,
                    "max_tensor_bytes": self.max_tensor_bytes, "max_total_bytes": self.max_total_bytes,
                    "total_calls": self.total, "distinct_calls": len(calls), "left_out": self.left_out,
                    "unrecorded": self.unrecorded, "calls": calls}

    def write(self) -> None:
        """Write the whole capture to a temporary file, then ``os.replace`` it over ``path`` (atomic)."""
        from safetensors.torch import save_file

        with self._lock:
            index = json.dumps(self.index(), separators=(",", ":"))
            tmp = self.path.with_name(f".{self.path.name}.{os.getpid()}.{threading.get_ident()}.tmp")
            try:
                save_file(dict(self._blobs), str(tmp), metadata={"format": FORMAT, METADATA_KEY: index,
                                                                 DIGEST_KEY: _UNSEALED})
                seal(tmp)
                with open(tmp, "rb+") as handle:
                    os.fsync(handle.fileno())
                os.replace(tmp, self.path)
            finally:
                if tmp.exists():
                    tmp.unlink()
            self._dirty = False
            self._last_write = time.monotonic()


# ------------------------------------------------------------------------------------------------ routes

def _named(names: Sequence[str], args: tuple, kwargs: Mapping[str, Any]) -> dict[str, Any]:
    if len(args) > len(names):
        raise TypeError(f"expected at most {len(names)} positional tensors, got {len(args)}")
    return {**dict(zip(names, args, strict=False)), **kwargs}


def _route_of(name: str, overload: str = "default") -> tuple[str, str] | None:
    """(form, kind) of an op name such as "_npu_fused_infer_attention_score_v2_get_max_workspace"."""
    m = _OP_NAME.match(name)
    if m is None or bool(m["companion_prefix"]) != bool(m["suffix"]):
        return None
    kind = (m["suffix"] or "").lstrip("_") or ("out" if overload == "out" else "op")
    return ("v2" if m["v2"] else "v1"), kind


def _positional(kind: str) -> tuple[str, ...]:
    return ("query", "value") if kind == "infer_output" else ("query", "key", "value")


UPDATE_OP = "npu_attention_update"  # torch_npu's context-parallel merge (fia_kit.cp.update): form "update"


def update_arguments(lse: Any, local_out: Any, update_type: Any = 0) -> dict[str, Any]:
    """npu_attention_update's arguments as a capture names them: lse[0], ..., local_out[0], ..., update_type."""
    named: dict[str, Any] = {}
    for name, items in (("lse", lse), ("local_out", local_out)):
        if isinstance(items, (list, tuple)):
            named.update({f"{name}[{k}]": t for k, t in enumerate(items)})
        else:
            named[name] = items
    named["update_type"] = update_type
    return named


def _update_named(args: tuple, kwargs: Mapping[str, Any]) -> dict[str, Any]:
    return update_arguments(**_named(("lse", "local_out", "update_type"), args, kwargs))


class _DispatchWatcher(TorchDispatchMode):
    """Sees the op's torch.ops overloads (npu, air, fia_kit and any other namespace) as the dispatcher runs them.

    It ignores torch.compile's internals (off while compiling, on while a compiled artifact runs), so a model can
    be compiled inside a capture and a graph that runs its nodes through the dispatcher (aot_eager, inductor's
    extern kernels) is seen at run time; a TorchAir GE graph runs on the device and is not.
    """

    @classmethod
    def ignore_compile_internals(cls) -> bool:
        return True

    @staticmethod
    @functools.cache
    def _match(func: torch._ops.OpOverload) -> tuple[str, str, str, bool] | None:
        namespace, name = func.namespace, func._schema.name.partition("::")[2]
        if name == UPDATE_OP:
            return f"torch.ops.{namespace}.{name}.{func._overloadname}", "update", "op", False
        route = _route_of(name, func._overloadname)
        if route is None:
            return None
        entry = f"torch.ops.{namespace}.{name}.{func._overloadname}"
        graph = namespace in ("air",) or name.startswith("air_") or namespace.endswith("_air")
        return entry, route[0], route[1], graph

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        match = self._match(func) if isinstance(func, torch._ops.OpOverload) else None
        if match is None or not observe.watching():
            return func(*args, **kwargs)
        entry, form, kind, graph = match
        named = _update_named(args, kwargs) if form == "update" else _named(_positional(kind), args, kwargs)
        with observe.observed(entry, form, kind, graph, named):
            return func(*args, **kwargs)


def _wrap(fn: Any, entry: str, form: str, kind: str, graph: bool) -> Any:
    """``fn`` reporting its calls; an ``.out`` attribute (torch_npu's ``op.out(...)``) is wrapped too."""
    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        if not observe.watching():
            return fn(*args, **kwargs)
        named = _named(_positional(kind), args, observe.out_arguments(kwargs) if kind == "out" else kwargs)
        with observe.observed(entry, form, kind, graph, named):
            return fn(*args, **kwargs)
    wrapper.__fia_kit_captured__ = fn
    out = getattr(fn, "out", None)
    if kind == "op" and callable(out):
        wrapper.out = _wrap(out, f"{entry}.out", form, "out", graph)
    return wrapper


def _wrap_update(fn: Any, entry: str) -> Any:
    """``npu_attention_update`` reporting its calls (form "update")."""
    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        if not observe.watching():
            return fn(*args, **kwargs)
        with observe.observed(entry, "update", "op", False, _update_named(args, kwargs)):
            return fn(*args, **kwargs)
    wrapper.__fia_kit_captured__ = fn
    return wrapper


def _patch_targets(extra: Sequence[Any]) -> list[tuple[Any, str, bool]]:
    """(object, dotted prefix for the entry name, graph) of every namespace whose op attributes are patched."""
    targets = []
    torch_npu = sys.modules.get("torch_npu")
    if torch_npu is not None:
        targets.append((torch_npu, "torch_npu", False))
    torchair = sys.modules.get("torchair")
    if torchair is not None and getattr(torchair, "ops", None) is not None:
        targets.append((torchair.ops, "tng.ops", True))
    for obj in extra:
        targets.append((obj, getattr(obj, "__name__", type(obj).__name__), False))
    return targets


def _graph_nodes(gm: torch.fx.GraphModule) -> Iterator[tuple[str, str, str, dict[str, Any]]]:
    """(entry, form, kind, arguments) of each FIA node of a traced graph; tensors are the nodes' fake values."""
    def value(x: Any) -> Any:
        return x.meta.get("example_value", x.meta.get("val")) if isinstance(x, torch.fx.Node) else x

    for node in gm.graph.nodes:
        target = node.target
        if node.op != "call_function" or not isinstance(target, (torch._ops.OpOverload, torch._ops.OpOverloadPacket)):
            continue
        overload = target if isinstance(target, torch._ops.OpOverload) else target.default
        name = overload._schema.name.partition("::")[2]
        route = _route_of(name, overload._overloadname)
        if route is None:
            continue
        entry = f"graph trace: torch.ops.{overload.namespace}.{name}.{overload._overloadname}"
        args = _named(_positional(route[1]), tuple(value(a) for a in node.args),
                      {k: value(v) for k, v in node.kwargs.items()})
        yield entry, route[0], route[1], args


def _wrap_backend_factory(get_npu_backend: Any) -> Any:
    """``torchair.get_npu_backend`` whose backends record each FIA node of a graph they compile (trace time only,
    metadata only: the graph's tensors are fake), then compile it as before."""
    @functools.wraps(get_npu_backend)
    def factory(*args: Any, **kwargs: Any) -> Any:
        backend = get_npu_backend(*args, **kwargs)

        def recording_backend(gm: torch.fx.GraphModule, example_inputs: list) -> Any:
            for entry, form, kind, arguments in _graph_nodes(gm):
                if observe.OBSERVERS:
                    observe.OBSERVERS[-1].begin(entry, form, kind, True, arguments)
            return backend(gm, example_inputs)
        return recording_backend
    factory.__fia_kit_captured__ = get_npu_backend
    return factory


@contextlib.contextmanager
def _patched(extra: Sequence[Any]) -> Iterator[None]:
    undo = []
    try:
        torchair = sys.modules.get("torchair")
        factory = getattr(torchair, "get_npu_backend", None)
        if factory is not None and not hasattr(factory, "__fia_kit_captured__"):
            torchair.get_npu_backend = _wrap_backend_factory(factory)
            undo.append((torchair, "get_npu_backend", factory))
        for obj, prefix, graph in _patch_targets(extra):
            for name in _ATTRIBUTES:
                fn = getattr(obj, name, None)
                route = _route_of(name)
                if fn is None or route is None or hasattr(fn, "__fia_kit_captured__"):
                    continue
                setattr(obj, name, _wrap(fn, f"{prefix}.{name}", route[0], route[1], graph))
                undo.append((obj, name, fn))
            fn = getattr(obj, UPDATE_OP, None)
            if fn is not None and not hasattr(fn, "__fia_kit_captured__"):
                setattr(obj, UPDATE_OP, _wrap_update(fn, f"{prefix}.{UPDATE_OP}"))
                undo.append((obj, UPDATE_OP, fn))
        yield
    finally:
        for obj, name, fn in reversed(undo):
            setattr(obj, name, fn)


@contextlib.contextmanager
def capture(path: str | os.PathLike, *, tensors: Policy = "auto", max_tensor_bytes: int = 1 << 20,
            max_total_bytes: int = 256 << 20, flush_seconds: float = 1.0,
            patch: Sequence[Any] = ()) -> Iterator[Recorder]:
    """Record every call of the op made inside the ``with`` block into ``path`` (see the module docstring).

    Args:
        path: the capture file (safetensors + a JSON index, docs/capture.md); replaced atomically on every write.
        tensors: "all" keeps every tensor; "auto" keeps tensors up to ``max_tensor_bytes`` each and the
            structural ones (mask, block table, length and padding tensors) whatever their size, and records
            shape, dtype, strides and stats (min/max/mean/std) for the rest, which a replay regenerates.
        max_total_bytes: tensor data kept in all ("auto"); later tensors are left out (and counted).
        flush_seconds: the file is rewritten at most this long after a change (0: after every new distinct
            call; a timer writes a change that no later call flushes) and on exit, so a crash leaves the last
            written file whole, missing at most the last ``flush_seconds`` of calls.
        patch: further modules or objects whose op attributes (``npu_fused_infer_attention_score[_v2]`` and
            companions) to wrap, e.g. a model module that did ``from torch_npu import ...``.
    Yields:
        The Recorder (``total``, ``distinct``, ``left_out`` so far).
    """
    if tensors not in ("all", "auto"):
        raise FIAArgumentError("tensors", "must be 'all' or 'auto'", tensors)
    recorder = Recorder(Path(path), tensors, int(max_tensor_bytes), int(max_total_bytes), float(flush_seconds))
    recorder.write()  # an empty, valid capture from the start
    observe.OBSERVERS.append(recorder)
    try:
        with _patched(patch), _DispatchWatcher():
            yield recorder
    finally:
        observe.OBSERVERS.remove(recorder)
        recorder.close()


# ------------------------------------------------------------------------------------------------ loading

_DTYPES = {_dtype_name(d): d for d in (torch.bool, torch.uint8, torch.int8, torch.int16, torch.int32, torch.int64,
                                       torch.uint16, torch.uint32, torch.uint64, torch.float16, torch.bfloat16,
                                       torch.float32, torch.float64, torch.float8_e4m3fn, torch.float8_e5m2)}
_KINDS = {"none", "bool", "int", "float", "str", "tensor", "ints", "unsupported"}


@dataclass(frozen=True)
class CapturedCall:
    """One distinct call from a capture file: how it was made, how often, and its arguments.

    Works wherever the kit takes a call (``fia_kit.run``, ``compare``, ``plan``, ``lint``, ``explore``,
    ``fia_kit.repro.to_script``, ``Case.from_call``) through ``to_fia_call()``.

    Attributes:
        index: position in the file. entry: how the model reached the op, e.g. "torch_npu.npu_fused_infer_
            attention_score" or "torch.ops.npu.npu_fused_infer_attention_score.out". form: "v1", "v2", or "update"
            for ``npu_attention_update`` (arguments lse[k], local_out[k], update_type; ``update_args()``).
        kind: "op", "out", "get_max_workspace" or "infer_output". graph: reached through TorchAir (tng.ops /
            torch.ops.air). count: how many calls had this signature (only the first one's tensors are kept).
        arguments: name -> JSON description (docs/capture.md). error: what the call raised, if it did.
    """

    index: int
    entry: str
    form: str
    kind: str
    graph: bool
    count: int
    signature: str
    arguments: Mapping[str, Mapping[str, Any]]
    error: str | None = None
    _blobs: Mapping[str, torch.Tensor] = field(default_factory=dict, repr=False, compare=False)

    @property
    def regenerated(self) -> tuple[str, ...]:
        """Tensor arguments whose data was left out: replays use regenerated values of the recorded
        shape, dtype and stats (min/max/mean/std), so outputs are NOT the model's."""
        return tuple(n for n, a in self.arguments.items() if a["kind"] == "tensor" and a.get("data") is None
                     and a.get("template") is None and a.get("role") != "output")

    @property
    def exact(self) -> bool:
        """Whether every input tensor was kept, so a replay is the captured call itself."""
        return not self.regenerated

    @property
    def replayable(self) -> bool:
        """Whether the call is one of the op (not ``_infer_output``) with every argument reconstructible."""
        return self.form != "update" and self.kind != "infer_output" and all(
            a["kind"] != "unsupported" and a.get("role") != "fake" for a in self.arguments.values())

    def value(self, name: str) -> Any:
        """Argument ``name`` as passed: tensors rebuilt on the CPU (kept, or regenerated when left out)."""
        return _materialise(self.arguments[name], self._blobs, f"{self.signature}:{name}")

    def args(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, dict[str, Any]]:
        """(query, key, value, keywords) of the op, without ``.out``'s workspace/attention_out/softmax_lse."""
        if not self.replayable:
            why = "an _infer_output companion call (it only allocates outputs; it has no key)" \
                if self.kind == "infer_output" else "a call of npu_attention_update (use update_args())" \
                if self.form == "update" else "recorded with arguments the file cannot rebuild"
            raise FIAArgumentError("call", f"captured call {self.index} ({self.entry}) is {why}", self.kind)
        values = {n: self.value(n) for n in self.arguments if n not in OUTPUTS}
        return values.pop("query"), values.pop("key"), values.pop("value"), values

    def update_args(self) -> tuple[list[torch.Tensor], list[torch.Tensor], int]:
        """(lse, local_out, update_type) of a captured ``npu_attention_update`` call (form "update")."""
        if self.form != "update":
            raise FIAArgumentError("call", f"captured call {self.index} ({self.entry}) is not npu_attention_update",
                                   self.form)
        count = sum(1 for n in self.arguments if n.startswith("lse["))
        return ([self.value(f"lse[{k}]") for k in range(count)],
                [self.value(f"local_out[{k}]") for k in range(count)], self.value("update_type"))

    def to_fia_call(self) -> FIACall:
        """The parsed call (TorchAir's tensor lengths are read as lengths; see ``fia_kit.call.parse_call``)."""
        query, key, value, keywords = self.args()
        return parse_call(self.form, query, key, value, keywords)

    def shapes(self) -> str:
        """"q 17x2x64 k 4x128x64 v 4x128x64 float16": the three positional tensors' shapes and dtype(s)."""
        parts, dtypes = [], []
        if self.form == "update":
            count = sum(1 for n in self.arguments if n.startswith("lse["))
            out = self.arguments["local_out[0]"]
            return f"sp {count} x local_out {'x'.join(map(str, out['shape']))} {out['dtype']}"
        for name in ("query", "key", "value"):
            a = self.arguments.get(name)
            if a and a["kind"] == "tensor":
                parts.append(f"{name[0]} {'x'.join(map(str, a['shape']))}")
                if a["dtype"] not in dtypes:
                    dtypes.append(a["dtype"])
        return " ".join(parts + ["/".join(dtypes)])

    def describe(self) -> str:
        """One line per argument: name, shape/dtype/device (+ kept / left out) or value."""
        lines = [f"call {self.index}: {self.entry} ({self.form}, {self.kind}) x{self.count}"
                 + (f"  raised {self.error}" if self.error else "")]
        for name, a in self.arguments.items():
            if a["kind"] == "tensor":
                state = "template" if a.get("template") else "output" if a.get("role") == "output" else \
                    "kept" if a.get("data") else "LEFT OUT (regenerated)"
                lines.append(f"  {name}: {tuple(a['shape'])} {a['dtype']} on {a['device']}, stride "
                             f"{tuple(a['stride'])}, {state}")
            elif a["kind"] in ("ints", "int", "float", "bool", "str"):
                lines.append(f"  {name}: {a['value']!r}" + (f" ({a['container']})" if a["kind"] == "ints" else ""))
            elif a["kind"] == "unsupported":
                lines.append(f"  {name}: {a['type']} (not reconstructible)")
        return "\n".join(lines)


def _materialise(a: Mapping[str, Any], blobs: Mapping[str, torch.Tensor], seed_text: str) -> Any:
    kind = a["kind"]
    if kind == "none":
        return None
    if kind in ("bool", "int", "str"):
        return a["value"]
    if kind == "float":
        return _json_float(a["value"])
    if kind == "ints":
        values = [int(v) for v in a["value"]]
        if a.get("container") == "tuple":
            return tuple(values)
        if a.get("container") == "numpy":
            import numpy

            return numpy.asarray(values, dtype=numpy.int64)
        return values
    if kind == "unsupported":
        raise FIAArgumentError("call", f"an argument of type {a['type']} was recorded by repr only", a["repr"])
    dtype, shape = _DTYPES[a["dtype"]], tuple(a["shape"])
    if a.get("template") == "compressed_causal_mask":
        return compressed_causal_mask(dtype).reshape(shape)
    if a.get("role") == "output" or (a.get("data") is None and a.get("stats") is None):
        return torch.empty(shape, dtype=dtype)
    data = blobs.get(a["data"]) if a.get("data") else _regenerate(shape, dtype, a["stats"], seed_text)
    return _restride(data, a["stride"])


def _regenerate(shape: tuple[int, ...], dtype: torch.dtype, stats: Mapping[str, Any], seed_text: str) -> torch.Tensor:
    """Seeded values of ``shape``/``dtype`` with the recorded mean/std, clipped to the recorded [min, max]."""
    seed = int(hashlib.sha256(seed_text.encode()).hexdigest()[:15], 16)
    gen = torch.Generator().manual_seed(seed)
    lo, hi, mean, std = (float(stats[k]) for k in ("min", "max", "mean", "std"))
    if dtype == torch.bool:
        return torch.rand(shape, generator=gen) < mean
    if dtype.is_floating_point:
        x = torch.randn(shape, generator=gen, dtype=torch.float64) * std + mean
        return x.clamp(lo, hi).to(dtype)
    return torch.randint(int(lo), int(hi) + 1, shape, generator=gen, dtype=torch.int64).to(dtype)


def _restride(t: torch.Tensor, stride: Sequence[int]) -> torch.Tensor:
    """``t`` with the recorded strides where they describe a non-overlapping layout (else contiguous)."""
    if tuple(stride) == t.stride() or t.numel() == 0:
        return t.clone()
    try:
        out = torch.empty_strided(t.shape, tuple(stride), dtype=t.dtype)
        out.copy_(t)
        return out
    except RuntimeError:
        return t.clone()


class Capture(Sequence[CapturedCall]):
    """The distinct calls of a capture file, in first-seen order, with the file's totals.

    Attributes:
        path, calls, total_calls (counting repeats), left_out (tensors left out), info (the file's JSON index
        without the calls: versions, policy, write time).
    """

    def __init__(self, path: Path, calls: list[CapturedCall], info: dict[str, Any]) -> None:
        self.path, self.calls, self.info = path, calls, info
        self.total_calls = int(info.get("total_calls", sum(c.count for c in calls)))
        self.left_out = sum(len(c.regenerated) for c in calls)

    def __getitem__(self, i):  # type: ignore[override]
        return self.calls[i]

    def __len__(self) -> int:
        return len(self.calls)

    def rows(self) -> list[dict[str, str]]:
        """One row per distinct call: index, count, entry, form, kind, shapes, left out, raised."""
        return [{"#": str(c.index), "count": str(c.count), "entry": c.entry, "form": c.form, "kind": c.kind,
                 "shapes": c.shapes(), "left out": ", ".join(c.regenerated) or "-",
                 "raised": (c.error or "-")[:60]} for c in self.calls]

    def table(self) -> str:
        rows = self.rows()
        head = f"{self.path.name}: {len(self)} distinct calls of {self.total_calls}"
        return head + "\n" + format_table(rows)

    def _repr_html_(self) -> str:
        import html

        rows = self.rows()
        if not rows:
            return f"<p>{html.escape(self.path.name)}: no calls</p>"
        head = "".join(f"<th>{html.escape(k)}</th>" for k in rows[0])
        body = "".join("<tr>" + "".join(f"<td>{html.escape(v)}</td>" for v in r.values()) + "</tr>" for r in rows)
        caption = html.escape(f"{self.path.name}: {len(self)} distinct calls of {self.total_calls}")
        return f"<table><caption>{caption}</caption><tr>{head}</tr>{body}</table>"

    def __repr__(self) -> str:
        return self.table()


def format_table(rows: Sequence[Mapping[str, str]]) -> str:
    """Rows of equal keys as an aligned text table (header, rule, rows)."""
    if not rows:
        return "(no rows)"
    keys = list(rows[0])
    widths = {k: max(len(k), *(len(r[k]) for r in rows)) for k in keys}
    line = lambda r: "  ".join(r[k].ljust(widths[k]) for k in keys).rstrip()  # noqa: E731
    return "\n".join([line({k: k for k in keys}), line({k: "-" * widths[k] for k in keys}), *map(line, rows)])


def load_capture(path: str | os.PathLike) -> Capture:
    """Load a capture file written by ``capture`` (no code is executed: safetensors + JSON).

    Raises:
        CaptureFileError: the file is missing, truncated, corrupt (its tensors' checksums do not match) or not a
            fia-kit capture, naming the file and the problem.
    """
    from safetensors import safe_open

    path = Path(path)
    if not path.is_file():
        raise CaptureFileError(path, "no such file")
    _check_file(path)
    try:
        with safe_open(str(path), "pt") as handle:
            metadata = handle.metadata() or {}
            keys = set(handle.keys())
            if metadata.get("format") != FORMAT or METADATA_KEY not in metadata:
                raise CaptureFileError(path, f"not a fia-kit capture (a safetensors file without the "
                                       f"'{METADATA_KEY}' index)")
            index = _parse_index(path, metadata[METADATA_KEY])
            needed = {a["data"] for c in index["calls"] for a in c["arguments"].values()
                      if a["kind"] == "tensor" and a.get("data")}
            if needed - keys:
                raise CaptureFileError(path, f"the index names {len(needed - keys)} tensor(s) the file does not "
                                       f"hold, e.g. {sorted(needed - keys)[0]}")
            blobs = {k: handle.get_tensor(k) for k in needed}
    except CaptureFileError:
        raise
    except Exception as exc:  # safetensors' own errors: truncated, bad header, not safetensors at all
        raise CaptureFileError(path, f"not a readable safetensors file ({type(exc).__name__}: {exc})") from None
    for key, tensor in blobs.items():
        if _digest(tensor) != key:
            raise CaptureFileError(path, f"tensor {key} is corrupt (its checksum does not match)")
    calls = []
    for i, record in enumerate(index["calls"]):
        for name, a in record["arguments"].items():
            if a["kind"] == "tensor" and a.get("data"):
                t = blobs[a["data"]]
                if list(t.shape) != list(a["shape"]) or _dtype_name(t.dtype) != a["dtype"]:
                    raise CaptureFileError(path, f"call {i}, {name}: the stored tensor is {tuple(t.shape)} "
                                           f"{_dtype_name(t.dtype)}, the index says {tuple(a['shape'])} {a['dtype']}")
        calls.append(CapturedCall(i, record["entry"], record["form"], record["kind"], record["graph"],
                                  record["count"], record["signature"], record["arguments"], record["error"],
                                  {a["data"]: blobs[a["data"]] for a in record["arguments"].values()
                                   if a["kind"] == "tensor" and a.get("data")}))
    info = {k: v for k, v in index.items() if k != "calls"}
    return Capture(path, calls, info)


def seal(path: str | os.PathLike) -> str:
    """Write the file's digest into its ``DIGEST_KEY`` metadata (which must hold the value being replaced: zeros
    when ``capture`` writes it, or the old digest after an edit) and return it: SHA-256 of the whole file with that
    value all zeros. ``capture`` seals every file it writes; a tool that edits a capture on purpose re-seals it."""
    path = Path(path)
    with open(path, "rb+") as handle:
        header = _read_header(path, handle, os.fstat(handle.fileno()).st_size)
        start = _digest_position(path, header)
        digest = _file_digest(handle, start).encode()
        handle.seek(start)
        handle.write(digest)
    return digest.decode()


def _read_header(path: Path, handle: Any, size: int) -> bytes:
    """The JSON header's bytes, after checking its declared length against the file's size (nothing larger than
    the file is read or allocated)."""
    if size < 8:
        raise CaptureFileError(path, f"not a readable safetensors file (truncated: {size} bytes, less than the "
                               "8-byte header length)")
    handle.seek(0)
    length = int.from_bytes(handle.read(8), "little")
    if length > size - 8 or length > _HEADER_MAX_BYTES:
        raise CaptureFileError(path, f"not a readable safetensors file (truncated or damaged: the header declares "
                               f"{length} bytes, the file holds {size - 8} after the length)")
    return handle.read(length)


def _digest_position(path: Path, header: bytes) -> int:
    """Offset in the file of the digest's 64 hex digits (the first 8 bytes are the header length)."""
    marker = f'"{DIGEST_KEY}":"'.encode()
    at = header.find(marker)
    if at < 0 or header.find(marker, at + 1) >= 0 or len(header) < at + len(marker) + 64:
        raise CaptureFileError(path, f"corrupt or not sealed: the header holds no single '{DIGEST_KEY}' digest")
    return 8 + at + len(marker)


def _file_digest(handle: Any, digest_at: int, chunk: int = 1 << 16) -> str:
    """SHA-256 of the file with the 64 bytes at ``digest_at`` read as zeros, streamed in ``chunk``-byte reads."""
    sha = hashlib.sha256()
    handle.seek(0)
    offset = 0
    while block := handle.read(chunk):
        lo, hi = max(digest_at - offset, 0), min(digest_at + 64 - offset, len(block))
        if lo < hi:
            block = block[:lo] + _UNSEALED.encode()[: hi - lo] + block[hi:]
        sha.update(block)
        offset += len(block)
    return sha.hexdigest()


def _check_file(path: Path) -> None:
    """The file's structure and digest, before safetensors maps it: the header length, a JSON header whose every
    tensor fits the file (shape x item size == its byte span, inside the data), the fia-kit marker, and the digest
    of every byte. CaptureFileError naming what is wrong; nothing larger than the file is allocated."""
    size = path.stat().st_size
    with open(path, "rb") as handle:
        raw = _read_header(path, handle, size)
        try:
            header = json.loads(raw.decode("utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise CaptureFileError(path, f"not a readable safetensors file (its header is not UTF-8 JSON: "
                                   f"{exc})") from None
        if not isinstance(header, dict):
            raise CaptureFileError(path, "not a readable safetensors file (its header is not a JSON object)")
        data_bytes = size - 8 - len(raw)
        for name, entry in header.items():
            if name != "__metadata__":
                _check_entry(path, name, entry, data_bytes)
        metadata = header.get("__metadata__")
        if not isinstance(metadata, dict) or metadata.get("format") != FORMAT or METADATA_KEY not in metadata:
            raise CaptureFileError(path, f"not a fia-kit capture (a safetensors file without the '{METADATA_KEY}' "
                                   "index)")
        start = _digest_position(path, raw)
        if _file_digest(handle, start) != metadata.get(DIGEST_KEY):
            raise CaptureFileError(path, "corrupt: its SHA-256 digest does not match its contents (a byte of the "
                                   "header, the index or the tensors changed)")


def _check_entry(path: Path, name: str, entry: Any, data_bytes: int) -> None:
    where = f"not a readable safetensors file (tensor {name[:40]!r}"
    if not isinstance(entry, dict) or entry.get("dtype") not in _ITEM_BYTES:
        raise CaptureFileError(path, f"{where}: no known dtype)")
    shape, offsets = entry.get("shape"), entry.get("data_offsets")
    if not (isinstance(shape, list) and all(type(n) is int and n >= 0 for n in shape)
            and isinstance(offsets, list) and len(offsets) == 2 and all(type(n) is int for n in offsets)):
        raise CaptureFileError(path, f"{where}: malformed shape or data_offsets)")
    begin, end = offsets
    declared = math.prod(shape) * _ITEM_BYTES[entry["dtype"]]
    if not 0 <= begin <= end <= data_bytes or end - begin != declared:
        raise CaptureFileError(path, f"{where} declares {declared} bytes at [{begin}, {end}); the file holds "
                               f"{data_bytes} bytes of data)")


def _parse_index(path: Path, text: str) -> dict[str, Any]:
    """The JSON index, checked field by field (CaptureFileError naming the first bad field)."""
    try:
        index = json.loads(text)
    except json.JSONDecodeError as exc:
        raise CaptureFileError(path, f"its index is not valid JSON ({exc})") from None

    def need(ok: bool, what: str) -> None:
        if not ok:
            raise CaptureFileError(path, f"malformed index: {what}")

    need(isinstance(index, dict), "not a JSON object")
    need(index.get("format") == FORMAT, f"format is {index.get('format')!r}, not {FORMAT!r}")
    need(index.get("version") == FORMAT_VERSION, f"version {index.get('version')!r} is not {FORMAT_VERSION} "
         "(written by another fia-kit release)")
    need(isinstance(index.get("calls"), list), "'calls' is not a list")
    for i, c in enumerate(index["calls"]):
        need(isinstance(c, dict), f"call {i} is not an object")
        for key, types in (("entry", str), ("form", str), ("kind", str), ("graph", bool), ("count", int),
                           ("signature", str), ("arguments", dict)):
            need(isinstance(c.get(key), types), f"call {i}: '{key}' is missing or not a {types.__name__}")
        need(c["form"] in ("v1", "v2", "update"), f"call {i}: form {c['form']!r}")
        need(c["kind"] in ("op", "out", "get_max_workspace", "infer_output"), f"call {i}: kind {c['kind']!r}")
        need(c.get("error") is None or isinstance(c["error"], str), f"call {i}: 'error'")
        positional = ("lse[0]", "local_out[0]") if c["form"] == "update" else _positional(c["kind"])
        need(all(n in c["arguments"] for n in positional), f"call {i}: needs arguments {positional}")
        for name, a in c["arguments"].items():
            where = f"call {i}, argument {name}"
            need(isinstance(a, dict) and a.get("kind") in _KINDS, f"{where}: unknown kind")
            if a["kind"] == "tensor":
                need(isinstance(a.get("shape"), list) and all(isinstance(s, int) and s >= 0 for s in a["shape"]),
                     f"{where}: shape")
                need(isinstance(a.get("stride"), list) and len(a["stride"]) == len(a["shape"]), f"{where}: stride")
                need(a.get("dtype") in _DTYPES, f"{where}: dtype {a.get('dtype')!r}")
                need(a.get("data") is None or isinstance(a["data"], str), f"{where}: data")
                if a.get("data") is None and a.get("template") is None and a.get("role") not in ("output", "fake"):
                    stats = a.get("stats")
                    need(isinstance(stats, dict) and all(isinstance(stats.get(k), (int, float, str))
                                                         for k in ("min", "max", "mean", "std")), f"{where}: stats")
            elif a["kind"] == "ints":
                need(isinstance(a.get("value"), list) and all(isinstance(v, int) for v in a["value"]),
                     f"{where}: value")
            elif a["kind"] in ("bool", "int", "float", "str"):
                need("value" in a, f"{where}: value")
    return index
