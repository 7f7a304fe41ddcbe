"""Valid calls on every path of the op, two-argument mutations of them, and the contract a mutated call must keep.

Used by tests/test_fuzz_two_arguments.py. A path is a valid call (form, query, key, value, keywords) built with the
kit's builders (``fia_kit.case.Case``, ``fia_kit.quant``); a mutation replaces one argument (or adds a keyword the
call lacked) with a value of the wrong dtype, shape, device, kind or range. The contract (``outcome``): the call is
refused with FIAArgumentError before any compute, or it computes an output that is finite on every row; never
another exception, a hang (``TIME_LIMIT_S``), or an allocation larger than ``ALLOCATION_FACTOR`` times the inputs'
bytes (plus ``ALLOCATION_SLACK``), measured through torch's dispatcher so that it works on CPU; and
``fia_kit.lint`` never raises on it.
"""

from __future__ import annotations

import functools
import signal
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves

import fia_kit
from fia_kit import quant
from fia_kit.case import Case
from fia_kit.errors import FIAArgumentError
from fia_kit.reference import op_outputs

TIME_LIMIT_S = 20.0  # CPU seconds (the process's, all threads): far above any valid tiny call
ALLOCATION_FACTOR = 64
ALLOCATION_SLACK = 1 << 20  # bytes: small bookkeeping tensors (lengths, indices) of a tiny call

Call = tuple[str, torch.Tensor, torch.Tensor, torch.Tensor, dict[str, Any]]


def _case(**fields: Any) -> Callable[[], Call]:
    def build() -> Call:
        built = Case(**fields).build()
        return built.form, built.query, built.key, built.value, dict(built.kwargs)
    return build


def _int4() -> Call:
    g = torch.Generator().manual_seed(1)
    k4, v4 = (torch.randint(-8, 8, (2, 1, 16, 64), generator=g, dtype=torch.int8) for _ in range(2))
    scale = torch.rand(1, 1, 1, 64, generator=g) + 0.5
    q = torch.randn(2, 2, 1, 64, generator=g).half()
    return "v1", q, quant.pack_int4(k4), quant.pack_int4(v4), dict(
        num_heads=2, num_key_value_heads=1, input_layout="BNSD", scale=0.125, key_antiquant_scale=scale.half(),
        value_antiquant_scale=scale.half(), actual_seq_lengths_kv=[16, 9])


def _int8_output() -> Call:
    form, q, k, v, kw = _case(q_lens=(3, 2), kv_lens=(5, 7), layout="BSND")()
    return form, q, k, v, {**kw, "quant_scale2": torch.tensor([20.0]), "quant_offset2": torch.tensor([1.0])}


def _full_quant() -> Call:
    g = torch.Generator().manual_seed(2)
    qf, kf, vf = (torch.randn(1, 2, 8, 32, generator=g) for _ in range(3))
    qi, ki, vi, kw = quant.full_quant_inputs(qf, kf, vf)
    return "v1", qi, ki, vi, dict(num_heads=2, input_layout="BNSD", scale=0.125, **kw)


def _left_padding() -> Call:
    g = torch.Generator().manual_seed(3)
    q, k, v = (torch.randn(2, 2, s, 16, generator=g).half() for s in (6, 10, 10))
    return "v1", q, k, v, dict(num_heads=2, input_layout="BNSD", scale=0.25, actual_seq_lengths=[3, 4],
                               actual_seq_lengths_kv=[5, 7], query_padding_size=torch.tensor([1]),
                               kv_padding_size=torch.tensor([2]))


# Every path issue 21 lists, each a valid call of the kit's reference.
PATHS: dict[str, Callable[[], Call]] = {
    "dense BNSD": _case(),
    "dense BSH causal": _case(layout="BSH", sparse_mode=3, q_lens=(4, 4), kv_lens=(6, 9)),
    "paged rank 3": _case(paged=True, cache_rank=3, q_lens=(1, 1), kv_lens=(20, 7)),
    "paged rank 4": _case(paged=True, cache_rank=4, q_lens=(2, 1), kv_lens=(20, 7), layout="BSND"),
    "paged NZ rank 5": _case(paged=True, cache_rank=5, q_lens=(1, 1), kv_lens=(20, 7)),
    "TND": _case(layout="TND", sparse_mode=3),
    "NTD": _case(layout="NTD", sparse_mode=3),
    "int8 K/V": _case(q_lens=(1, 1), kv_lens=(9, 12), kv_quant="channel"),
    "int8 K/V per token": _case(q_lens=(1, 1), kv_lens=(9, 12), kv_quant="token"),
    "int4 K/V": _int4,
    "int8 output": _int8_output,
    "full quant": _full_quant,
    "MLA rope": _case(q_lens=(1, 1), kv_lens=(7, 20), heads=4, kv_heads=1, head_dim=128, rope_dim=64,
                      layout="BSND"),
    "tree mask": _case(q_lens=(4, 3), kv_lens=(9, 5), heads=2, kv_heads=1, head_dim=512, rope_dim=64,
                       sparse_mode=9),
    "shared prefix": _case(prefix_len=3),
    "left padding": _left_padding,
    "sinks": _case(layout="TND", sinks=True, sparse_mode=3),
    "pse": _case(pse=True),
}

# Keywords a mutation may add to a call that lacks them (its own value drawn from the mutations below).
ADDABLE = {"v1": ("atten_mask", "pse_shift", "block_table", "actual_seq_lengths", "actual_seq_lengths_kv",
                  "query_rope", "key_rope", "key_antiquant_scale", "quant_scale2", "query_padding_size",
                  "key_shared_prefix", "actual_shared_prefix_len", "block_size", "pre_tokens", "next_tokens"),
           "v2": ("atten_mask", "pse_shift", "block_table", "actual_seq_qlen", "actual_seq_kvlen", "query_rope",
                  "key_rope", "dequant_scale_key", "quant_scale_out", "learnable_sink", "block_size",
                  "pre_tokens", "next_tokens")}


# ------------------------------------------------------------------------------------------------ mutations
def _reshaped(t: torch.Tensor, how: str) -> torch.Tensor:
    if how == "drop axis":
        return t.reshape(-1) if t.dim() > 1 else t.reshape(1, -1)
    if how == "add axis":
        return t.unsqueeze(0)
    if how == "grow last":
        return torch.cat([t, t.narrow(-1, 0, 1)], -1) if t.dim() and t.shape[-1] else t.reshape(-1, 1)
    if how == "grow first":
        return torch.cat([t, t.narrow(0, 0, 1)], 0) if t.dim() and t.shape[0] else t.reshape(1, -1)
    if how == "shrink last":
        return t.narrow(-1, 0, max(0, t.shape[-1] - 1)) if t.dim() else t.reshape(0)
    if how == "empty":
        return t.narrow(0, 0, 0) if t.dim() else t.reshape(0)
    if how == "expanded":  # a stride-0 view, as broadcasting gives
        return t.narrow(0, 0, 1).expand(*t.shape) if t.dim() and t.shape[0] else t
    if how == "transposed":  # same data, another shape, non-contiguous
        return t.transpose(0, -1) if t.dim() > 1 else t
    raise AssertionError(how)


def _filled(t: torch.Tensor, value: float) -> torch.Tensor:
    if t.dtype == torch.bool:
        return torch.full_like(t, bool(value))
    if t.is_complex():
        return torch.full_like(t, complex(value, 0))
    if not t.dtype.is_floating_point:
        info = torch.iinfo(t.dtype)
        value = max(info.min, min(info.max, int(value) if abs(value) != float("inf") and value == value else -1))
    elif abs(value) != float("inf") and value == value:  # finite: the dtype's nearest finite value
        value = max(-torch.finfo(t.dtype).max, min(torch.finfo(t.dtype).max, value))
    return torch.full_like(t, value)


DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64, torch.int8, torch.uint8, torch.int32,
          torch.int64, torch.bool, torch.complex64)
TENSOR_MUTATIONS: tuple[tuple[str, Callable[[torch.Tensor], Any]], ...] = (
    ("on meta", lambda t: t.to("meta")),
    *((f"as {str(d).removeprefix('torch.')}", functools.partial(torch.Tensor.to, dtype=d)) for d in DTYPES),
    *((f"shape: {h}", functools.partial(_reshaped, how=h)) for h in
      ("drop axis", "add axis", "grow last", "grow first", "shrink last", "empty", "expanded", "transposed")),
    ("filled nan", lambda t: _filled(t, float("nan"))),
    ("filled inf", lambda t: _filled(t, float("inf"))),
    ("filled -1", lambda t: _filled(t, -1)),
    ("filled 0", lambda t: _filled(t, 0)),
    ("filled huge", lambda t: _filled(t, 2.0 ** 31)),
    ("filled 60000", lambda t: _filled(t, 60000.0)),
    ("None", lambda t: None),
    ("a list", lambda t: t.reshape(-1)[:4].tolist()),
    ("an int", lambda t: 3),
    ("a string", lambda t: "tensor"),
)
INT_MUTATIONS: tuple[tuple[str, Callable[[Any], Any]], ...] = (
    ("-1", lambda v: -1), ("0", lambda v: 0), ("+1", lambda v: v + 1), ("-1 from it", lambda v: v - 1),
    ("2**31", lambda v: 2 ** 31), ("2**63", lambda v: 2 ** 63), ("-2**31", lambda v: -(2 ** 31)),
    ("1.5", lambda v: 1.5), ("True", lambda v: True), ("'3'", lambda v: "3"), ("None", lambda v: None),
    ("a tensor", lambda v: torch.tensor(v)), ("a list", lambda v: [v]), ("nan", lambda v: float("nan")),
)
LIST_MUTATIONS: tuple[tuple[str, Callable[[list], Any]], ...] = (
    ("empty", lambda v: []), ("one more", lambda v: [*v, v[-1] if v else 1]), ("one less", lambda v: v[:-1]),
    ("negative", lambda v: [-1, *v[1:]]), ("huge", lambda v: [2 ** 31, *v[1:]]),
    ("2**63", lambda v: [2 ** 63 - 1] * len(v)), ("reversed", lambda v: v[::-1]),
    ("zeros", lambda v: [0] * len(v)), ("floats", lambda v: [x + 0.5 for x in v]),
    ("strings", lambda v: [str(x) for x in v]), ("a tensor", lambda v: torch.tensor(v)),
    ("int32 tensor", lambda v: torch.tensor(v, dtype=torch.int32)),
    ("on meta", lambda v: torch.tensor(v).to("meta")), ("nested", lambda v: [v]), ("None", lambda v: None),
    ("an int", lambda v: v[0] if v else 0), ("a tuple", lambda v: tuple(v)), ("bools", lambda v: [True] * len(v)),
)
FLOAT_MUTATIONS: tuple[tuple[str, Callable[[float], Any]], ...] = (
    ("nan", lambda v: float("nan")), ("inf", lambda v: float("inf")), ("-inf", lambda v: float("-inf")),
    ("0", lambda v: 0.0), ("-1", lambda v: -1.0), ("1e30", lambda v: 1e30), ("1e-30", lambda v: 1e-30),
    ("1e4", lambda v: 1e4), ("a string", lambda v: "0.1"), ("None", lambda v: None), ("True", lambda v: True),
    ("a tensor", lambda v: torch.tensor(v)), ("an int", lambda v: 1),
)
STR_MUTATIONS: tuple[tuple[str, Callable[[str], Any]], ...] = (
    *((f"layout {name}", (lambda n: lambda v: n)(name)) for name in
      ("BNSD", "BSH", "BSND", "TND", "NTD", "BNSD_BSND", "TND_NTD", "NTD_TND", "BSH_NBSD", "BNSD_NBSD")),
    ("lower case", lambda v: v.lower()), ("empty", lambda v: ""), ("None", lambda v: None), ("an int", lambda v: 3),
    ("padded", lambda v: f" {v} "),
)
BOOL_MUTATIONS: tuple[tuple[str, Callable[[bool], Any]], ...] = (
    ("2", lambda v: 2), ("'yes'", lambda v: "yes"), ("None", lambda v: None), ("not", lambda v: not v),
    ("a tensor", lambda v: torch.tensor(v)),
)
ABSENT_VALUES: tuple[tuple[str, Callable[[Any], Any]], ...] = (
    ("small float tensor", lambda v: torch.randn(2, 2, generator=torch.Generator().manual_seed(4))),
    ("int32 tensor", lambda v: torch.tensor([[0, 1]], dtype=torch.int32)),
    ("bool mask", lambda v: torch.zeros(2, 1, 6, 12, dtype=torch.bool)),
    ("on meta", lambda v: torch.zeros(2, 4).to("meta")), ("a list", lambda v: [3, 4]),
    ("an int", lambda v: 16), ("-1", lambda v: -1), ("2**40", lambda v: 2 ** 40),
    ("float tensor (1,)", lambda v: torch.tensor([2.0])),
)


# Mutations that keep an argument's type and shape (values, strides, lengths moved by one): more of them are
# accepted, so they probe the compute half of the contract (finite rows, bounded allocation).
GENTLE_TENSOR = (
    ("filled 0", lambda t: _filled(t, 0)),
    ("filled 60000", lambda t: _filled(t, 60000.0)),
    ("times 100", lambda t: t * 100 if t.is_floating_point() else t),
    ("negated", lambda t: -t if t.is_floating_point() or t.dtype in (torch.int8, torch.int32, torch.int64) else t),
    ("non-contiguous copy", lambda t: t.transpose(0, -1).contiguous().transpose(0, -1) if t.dim() > 1 else t),
)
GENTLE_INT = (("+1", lambda v: v + 1), ("-1 from it", lambda v: v - 1), ("0", lambda v: 0))
GENTLE_LIST = (("last -1", lambda v: [*v[:-1], max(0, v[-1] - 1)] if v else v),
               ("last +1", lambda v: [*v[:-1], v[-1] + 1] if v else v),
               ("first 0", lambda v: [0, *v[1:]] if v else v))
GENTLE_FLOAT = (("times 100", lambda v: v * 100), ("1e4", lambda v: 1e4), ("tiny", lambda v: 1e-6))


def gentle_mutations_for(value: Any) -> tuple[tuple[str, Callable[[Any], Any]], ...]:
    """Type- and shape-keeping mutations of a given argument (empty where there are none)."""
    if isinstance(value, torch.Tensor):
        return GENTLE_TENSOR
    if isinstance(value, bool) or not isinstance(value, (int, float, list, tuple)):
        return ()
    return GENTLE_INT if isinstance(value, int) else GENTLE_FLOAT if isinstance(value, float) else GENTLE_LIST


def mutations_for(value: Any, present: bool) -> tuple[tuple[str, Callable[[Any], Any]], ...]:
    """The mutations that apply to an argument holding ``value`` (``present``: the call gives it)."""
    if not present:
        return ABSENT_VALUES
    if isinstance(value, torch.Tensor):
        return TENSOR_MUTATIONS
    if isinstance(value, bool):
        return BOOL_MUTATIONS
    if isinstance(value, int):
        return INT_MUTATIONS
    if isinstance(value, float):
        return FLOAT_MUTATIONS
    if isinstance(value, str):
        return STR_MUTATIONS
    if isinstance(value, (list, tuple)):
        return LIST_MUTATIONS
    return (("None", lambda v: None),)


# ------------------------------------------------------------------------------------------------ the contract
class Hang(Exception):
    """The call ran past TIME_LIMIT_S."""


@contextmanager
def time_limit(seconds: float) -> Iterator[None]:
    """Raise Hang once the block has used ``seconds`` of this process's CPU time (a loop that never ends uses CPU;
    a loaded machine's waiting does not count, so the limit does not flake); pytest-timeout bounds the wall time."""
    def expire(signum: int, frame: Any) -> None:
        raise Hang(f"still running after {seconds} s of CPU time")
    previous = signal.signal(signal.SIGPROF, expire)
    signal.setitimer(signal.ITIMER_PROF, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_PROF, 0)
        signal.signal(signal.SIGPROF, previous)


class AllocationMeter(TorchDispatchMode):
    """The largest tensor storage any torch op creates while active (bytes), on any device, CPU included.

    Every op's outputs pass through the dispatcher; an output whose storage is none of the op's inputs' is new.
    """

    def __init__(self) -> None:
        super().__init__()
        self.largest = 0
        self.op = ""

    def __torch_dispatch__(self, func: Any, types: Any, args: Any = (), kwargs: Any = None) -> Any:
        out = func(*args, **(kwargs or {}))
        inputs = {_storage_key(t) for t in tree_leaves((args, kwargs)) if isinstance(t, torch.Tensor)}
        for t in tree_leaves(out):
            if isinstance(t, torch.Tensor) and t.device.type != "meta" and _storage_key(t) not in inputs:
                size = t.untyped_storage().nbytes()
                if size > self.largest:
                    self.largest, self.op = size, str(func)
        return out


def _storage_key(t: torch.Tensor) -> tuple[str, int]:
    if t.device.type == "meta":
        return ("meta", id(t))
    return (t.device.type, t.untyped_storage().data_ptr())


def input_bytes(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, kw: dict[str, Any]) -> int:
    tensors = [t for t in tree_leaves((q, k, v, kw)) if isinstance(t, torch.Tensor) and t.device.type != "meta"]
    return sum(t.untyped_storage().nbytes() for t in {_storage_key(t): t for t in tensors}.values())


@dataclass
class Outcome:
    verdict: str  # "accepted" or "refused"
    detail: str = ""


def outcome(form: str, q: Any, k: Any, v: Any, kw: dict[str, Any]) -> Outcome:
    """Run the call through the kit's plan (validation) and the reference (compute); raise AssertionError when
    the contract is broken."""
    budget = ALLOCATION_FACTOR * input_bytes(*(x if isinstance(x, torch.Tensor) else torch.empty(0)
                                               for x in (q, k, v)), kw) + ALLOCATION_SLACK
    meter = AllocationMeter()
    stage = "validation"
    try:
        with time_limit(TIME_LIMIT_S), meter:
            try:
                plan = fia_kit.plan(form, q, k, v, **kw)
            except FIAArgumentError as err:
                result = Outcome("refused", f"{err.parameter}: {err.rule}" if hasattr(err, "rule") else str(err))
            else:
                stage = "compute"
                out, _ = op_outputs(plan)
                result = Outcome("accepted")
                if out.is_floating_point() and not bool(torch.isfinite(out).all()):
                    bad = (~torch.isfinite(out)).sum()
                    raise AssertionError(f"accepted, but {int(bad)} output values are not finite")
    except AssertionError:
        raise
    except Hang as exc:
        raise AssertionError(f"hang in {stage}: {exc}") from None
    except Exception as exc:
        raise AssertionError(f"{type(exc).__name__} in {stage}: {exc}") from exc
    assert meter.largest <= budget, (f"{stage} allocated {meter.largest} bytes in one tensor ({meter.op}); inputs "
                                     f"allow {budget}")
    try:
        with time_limit(TIME_LIMIT_S):
            fia_kit.lint(form, q, k, v, **kw)
    except Exception as exc:
        raise AssertionError(f"lint raised {type(exc).__name__}: {exc}") from exc
    return result
