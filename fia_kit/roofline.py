"""How much work one FIA call is, and how close a measured time comes to a device's roofline.

    cost = call_cost(fia_kit.plan(...))      # FLOPs, minimum bytes, score pairs, torch_npu profiler's FLOPs
    peaks = DevicePeaks("my 910B", flops_per_s=..., bytes_per_s=...)   # enter your device's peak
    roof = roofline(plan, seconds=median_s, peaks=peaks)
    roof.fraction                            # achieved FLOP/s / attainable FLOP/s

FLOPs follow torch_npu's profiler formula, 2 * N_q * scores * (D_q + D_v) (two matmuls, Q K^T and P V, one multiply
and one add each), but with ``scores`` counted exactly: the (query row, key) pairs the sparse-mode band and the actual
lengths leave, summed over batches, from the problem's ``BatchPlan`` bands (``masks.Band.key_counts``). Pairs hidden
only by an explicit atten_mask still count: the kernel computes them and then masks them. D_q includes the 64 rope
dims when query_rope is given. ``profiler_flops`` reproduces what torch_npu's profiler itself reports, from the
tensors' full shapes (``torch_npu/profiler/_flops_formulas.py``), for comparison.

Bytes are a lower bound on the traffic to device memory: Q read once for the valid rows; K and V read once for the
keys some row's band reaches (valid tokens only; with a paged cache, whole-block reads add at most block_size - 1
tokens per sequence); the whole attention_out written (the op writes padding rows too); softmax_lse written when
requested; atten_mask (1 byte per element) and pse_shift read for the in-band pairs only. The compressed 2048x2048
mask of modes 2-4 only encodes the band and is not counted; learnable_sink (N_q floats) is negligible.

Device peaks: no authoritative per-device number for Atlas A2/A3 (910B/910C) FIA-relevant peaks was found in the
sources the kit uses, so ``DevicePeaks`` has no presets: enter your device's peak FLOP/s (for the input dtype) and
memory bandwidth. ``measure_cpu_peaks()`` measures this machine's matmul FLOP/s and copy bandwidth.
"""

from __future__ import annotations

import statistics
import time
from dataclasses import asdict, dataclass
from typing import Any

import torch

from .call import FIACall
from .planning import Plan, build_plan

ROPE_DIM = 64
LSE_BYTES = 4  # float32
MASK_BYTES = 1  # bool / int8 / uint8


def problem_of(target: Plan | FIACall) -> Plan:
    """The validated problem of a call (validated once here), or the problem itself."""
    return target if isinstance(target, Plan) else build_plan(target)


def batch_score_pairs(problem: Plan) -> list[int]:
    """Per batch: the (query row, key) pairs inside the sparse-mode band, keys counting the shared prefix first."""
    return [int(plan.band.key_counts(0, plan.q_len, problem.prefix_len + plan.kv_len).sum()) if plan.q_len else 0
            for plan in problem.batches]


def query_head_dim(problem: Plan) -> int:
    """D_q of the Q K^T product: the head dim plus 64 with query_rope."""
    return problem.head_dim + (ROPE_DIM if problem.query_rope is not None else 0)


def attention_flops(problem: Plan) -> int:
    """2 * N_q * scores * (D_q + D_v), scores = the in-band pairs of every batch (see module docstring)."""
    return 2 * problem.num_heads * sum(batch_score_pairs(problem)) * (query_head_dim(problem) + problem.value_dim)


def minimum_bytes(problem: Plan) -> dict[str, int]:
    """Bytes the call must move at least, by tensor: query, key, value, attention_out, softmax_lse, atten_mask,
    pse_shift (see the module docstring for what is counted)."""
    q_rows = sum(plan.q_len for plan in problem.batches)
    n_q, n_kv = problem.num_heads, problem.num_kv_heads
    q_item = problem.query.element_size()
    query = q_rows * n_q * problem.head_dim * q_item
    if problem.query_rope is not None:
        query += q_rows * n_q * ROPE_DIM * problem.query_rope.element_size()
    own_keys, prefix_keys = 0, 0
    for plan in problem.batches:
        if not plan.q_len:
            continue
        start, stop = plan.band.key_range(0, plan.q_len, problem.prefix_len + plan.kv_len)
        prefix_keys = max(prefix_keys, max(0, min(stop, problem.prefix_len) - start))  # prefix shared: >= max
        own_keys += max(0, stop - max(start, problem.prefix_len))
    keys = own_keys + prefix_keys
    key = keys * n_kv * problem.head_dim * problem.key.element_size()
    if problem.key_rope is not None:
        key += own_keys * n_kv * ROPE_DIM * problem.key_rope.element_size()
    value = keys * n_kv * problem.value_dim * problem.value.element_size()
    out = _numel(problem.out_shape) * torch.empty(0, dtype=problem.out_dtype).element_size()
    lse = _numel(problem.lse_shape) * LSE_BYTES if problem.return_lse else 0
    pairs = batch_score_pairs(problem)
    mask = _plane_elements(problem.atten_mask, pairs) * MASK_BYTES
    pse = _plane_elements(problem.pse, pairs) * n_q * problem.pse.element_size() if problem.pse is not None else 0
    return {"query": query, "key": key, "value": value, "attention_out": out, "softmax_lse": lse,
            "atten_mask": mask, "pse_shift": pse}


def _plane_elements(plane: torch.Tensor | None, pairs: list[int]) -> int:
    """In-band elements read from a per-batch (B, ...) or shared (1, ...) mask/pse plane (shared: at least max)."""
    if plane is None:
        return 0
    return sum(pairs) if plane.shape[0] > 1 else max(pairs, default=0)


def _numel(shape: tuple[int, ...]) -> int:
    n = 1
    for s in shape:
        n *= s
    return n


def profiler_flops(target: Plan | FIACall) -> int | None:
    """The FLOPs torch_npu's profiler reports for this call, or None where it has no formula.

    Mirrors ``npu_fused_infer_attention_score_flops`` in torch_npu/profiler/_flops_formulas.py (Ascend/pytorch):
    registered for the v1 op only; layouts BNSD, BSND, BSH (and SBH) from the full tensor shapes, ignoring actual
    lengths, with scores = S_q*S_kv (mode 0), S_q*S_kv - S_kv^2/2 or S_q^2/2 (mode 2), S_kv^2/2 or
    S_q*S_kv - S_q^2/2 (mode 3); TND from the cumulative actual lengths (differenced, also for paged kv lengths);
    other modes and layouts have no formula (the profiler raises). With a paged cache the key "sequence" axis it
    reads is block_size: the profiler's number is then not the call's work. A plan is read through the call it
    was built from (``Plan.call``): the formula needs the tensors' shapes as given.
    """
    call = target.call if isinstance(target, Plan) else target
    if call is None or call.form != "v1":
        return None
    o = call.options
    layout, heads = o["input_layout"], int(o["num_heads"])
    kv_heads = int(o["num_key_value_heads"] or heads)
    q_shape, k_shape, v_shape = (tuple(int(d) for d in t.shape) for t in (call.query, call.key, call.value))
    if layout == "TND":
        if o["actual_seq_lengths"] is None or o["actual_seq_lengths_kv"] is None:
            return None
        q_lens, kv_lens = _differenced(o["actual_seq_lengths"]), _differenced(o["actual_seq_lengths_kv"])
        if len(q_lens) != len(kv_lens) or any(n < 0 for n in q_lens + kv_lens):
            return None
        return int(2 * heads * (q_shape[2] + v_shape[2]) * sum(a * b for a, b in zip(q_lens, kv_lens, strict=True)))
    try:
        _, _, k_s, _ = _profiler_dims(k_shape, layout, kv_heads)
        v_d = _profiler_dims(v_shape, layout, kv_heads)[3]
        q_b, q_n, q_s, q_d = _profiler_dims(q_shape, layout, heads)
    except ValueError:  # what the profiler raises on: other layouts, other ranks (e.g. NZ caches), H % N != 0
        return None
    mode = o["sparse_mode"]
    if mode == 0:
        scores = q_s * k_s
    elif mode == 2:
        scores = q_s * k_s - k_s * k_s / 2 if q_s >= k_s else q_s * q_s / 2
    elif mode == 3:
        scores = k_s * k_s / 2 if q_s >= k_s else q_s * k_s - q_s * q_s / 2
    else:
        return None
    return int(2 * q_b * q_n * scores * (q_d + v_d))


def _profiler_dims(shape: tuple[int, ...], layout: str, heads: int) -> tuple[int, int, int, int]:
    """(B, N, S, D) as the profiler's _parse_dims reads a shape; ValueError where it fails."""
    if layout in ("BSH", "SBH"):
        if heads <= 0 or shape[-1] % heads:
            raise ValueError(shape)
        s0, s1, hidden = shape  # ValueError on another rank
        return (s0, heads, s1, hidden // heads) if layout == "BSH" else (s1, heads, s0, hidden // heads)
    if layout == "BNSD":
        b, n, s, d = shape
        return b, n, s, d
    if layout == "BSND":
        b, s, n, d = shape
        return b, n, s, d
    raise ValueError(layout)


def _differenced(cumulative: Any) -> list[int]:
    """Per-batch lengths from cumulative ones, trailing zeros dropped (the profiler's _parse_seq_len)."""
    values = [int(v) for v in cumulative]
    while values and values[-1] == 0:
        values.pop()
    return [b - a for a, b in zip([0, *values[:-1]], values, strict=True)]


@dataclass(frozen=True)
class CallCost:
    """Work of one call. flops: exact (in-band pairs); bytes: lower bound, by tensor; score_pairs: per batch, per
    head; profiler_flops: torch_npu profiler's figure (None where it has no formula)."""

    flops: int
    bytes_by_tensor: dict[str, int]
    score_pairs: list[int]
    profiler_flops: int | None

    @property
    def bytes(self) -> int:
        return sum(self.bytes_by_tensor.values())

    @property
    def intensity(self) -> float:
        """Arithmetic intensity, FLOP per byte."""
        return self.flops / self.bytes if self.bytes else float("inf")


def call_cost(target: Plan | FIACall) -> CallCost:
    """FLOPs, minimum bytes and score pairs of a plan (``fia_kit.plan(...)``), or of a call planned here once."""
    problem = problem_of(target)
    return CallCost(attention_flops(problem), minimum_bytes(problem), batch_score_pairs(problem),
                    profiler_flops(problem))


@dataclass(frozen=True)
class DevicePeaks:
    """A device's peak compute (FLOP/s, for the dtype you run) and memory bandwidth (bytes/s).

    No presets: enter your device's peak (from its datasheet, or measured); None means unknown.
    """

    name: str
    flops_per_s: float | None = None
    bytes_per_s: float | None = None

    @property
    def ridge(self) -> float | None:
        """Intensity (FLOP/byte) where the memory roof meets the compute roof."""
        if self.flops_per_s is None or not self.bytes_per_s:
            return None
        return self.flops_per_s / self.bytes_per_s


def measure_cpu_peaks(dtype: torch.dtype = torch.float32, size: int = 1024, copy_mib: int = 256,
                      repeats: int = 5) -> DevicePeaks:
    """This machine's matmul FLOP/s (size x size x size, ``dtype``) and copy bandwidth (bytes read + written).

    Medians over ``repeats`` after one warm-up. These are what torch reaches here, not the hardware's limits.
    """
    a, b = torch.randn(size, size).to(dtype), torch.randn(size, size).to(dtype)
    src = torch.empty(copy_mib * 2**20, dtype=torch.uint8).fill_(1)
    dst = torch.empty_like(src)
    matmul_s = _median_seconds(lambda: torch.mm(a, b), repeats)
    copy_s = _median_seconds(lambda: dst.copy_(src), repeats)
    threads = torch.get_num_threads()
    return DevicePeaks(f"this CPU ({threads} threads, {str(dtype).removeprefix('torch.')} matmul)",
                       2 * size ** 3 / matmul_s, 2 * src.numel() / copy_s)


def _median_seconds(fn: Any, repeats: int) -> float:
    fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


@dataclass(frozen=True)
class Roofline:
    """One call's place under a roofline. FLOP/s and bytes/s; attainable and fraction are None without peaks."""

    label: str
    cost: CallCost
    seconds: float
    peaks: DevicePeaks

    @property
    def intensity(self) -> float:
        return self.cost.intensity

    @property
    def achieved_flops_per_s(self) -> float:
        return self.cost.flops / self.seconds

    @property
    def attainable_flops_per_s(self) -> float | None:
        """min(peak FLOP/s, intensity * bandwidth), or the one roof that is known, or None."""
        roofs = [r for r in (self.peaks.flops_per_s,
                             None if self.peaks.bytes_per_s is None else self.intensity * self.peaks.bytes_per_s)
                 if r is not None]
        return min(roofs) if roofs else None

    @property
    def fraction(self) -> float | None:
        attainable = self.attainable_flops_per_s
        return None if not attainable else self.achieved_flops_per_s / attainable

    @property
    def bound(self) -> str | None:
        """"memory" left of the ridge, "compute" right of it, None without both peaks."""
        ridge = self.peaks.ridge
        return None if ridge is None else ("memory" if self.intensity < ridge else "compute")

    def to_dict(self) -> dict[str, Any]:
        return {"label": self.label, "seconds": self.seconds, "flops": self.cost.flops, "bytes": self.cost.bytes,
                "bytes_by_tensor": self.cost.bytes_by_tensor, "profiler_flops": self.cost.profiler_flops,
                "intensity": self.intensity, "achieved_flops_per_s": self.achieved_flops_per_s,
                "attainable_flops_per_s": self.attainable_flops_per_s, "fraction": self.fraction,
                "bound": self.bound, "peaks": asdict(self.peaks)}

    def table(self) -> str:
        def fmt(x: float | None, unit: str) -> str:
            return "enter your device's peak" if x is None else f"{x:.4g} {unit}"
        lines = [f"{self.label}: {self.cost.flops:.4g} FLOP, {self.cost.bytes:.4g} B (lower bound), "
                 f"intensity {self.intensity:.3g} FLOP/B",
                 f"  time {self.seconds * 1e3:.3f} ms -> achieved {self.achieved_flops_per_s:.4g} FLOP/s",
                 f"  peaks ({self.peaks.name}): {fmt(self.peaks.flops_per_s, 'FLOP/s')}, "
                 f"{fmt(self.peaks.bytes_per_s, 'B/s')}",
                 f"  attainable {fmt(self.attainable_flops_per_s, 'FLOP/s')}"
                 + ("" if self.fraction is None else f", fraction {self.fraction:.1%}")
                 + ("" if self.bound is None else f", {self.bound}-bound")]
        return "\n".join(lines)

    def figure(self) -> Any:
        """Plotly roofline chart (fia_kit.figures.roofline_chart); needs both peaks."""
        if self.peaks.flops_per_s is None or self.peaks.bytes_per_s is None:
            raise ValueError("a roofline chart needs both peaks: enter your device's peak FLOP/s and bandwidth")
        from .figures import roofline_chart
        return roofline_chart([{"label": self.label, "intensity": self.intensity,
                                "flops": self.achieved_flops_per_s}], self.peaks.flops_per_s, self.peaks.bytes_per_s)


def roofline(target: Plan | FIACall, seconds: float, peaks: DevicePeaks, label: str = "FIA") -> Roofline:
    """Place a call that took ``seconds`` under ``peaks``' roofline."""
    if seconds <= 0:
        raise ValueError(f"seconds must be > 0, got {seconds}")
    return Roofline(label, call_cost(target), seconds, peaks)
