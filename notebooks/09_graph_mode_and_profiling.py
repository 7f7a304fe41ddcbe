# %% [markdown]
# # 9 · Graph mode and profiling
#
# In production the op runs inside a graph: TorchAir compiles a model into a GE graph on the NPU. This
# notebook shows how (the cells run TorchAir on an Ascend box), what stands in for it elsewhere (the kit's
# *compiled look-alike ops* under `torch.compile`), why TorchAir's op takes **int64 device tensors** for the
# lengths, and how to time a call (`fia_kit.profiling`) and place it under a roofline (`fia_kit.roofline`).
#
# Spec ([docs/](../docs/README.md)): section 1.4 *TorchAir (`tng.ops`) variants*, section 4.3 *Output-shape
# inference*, section 25.4 *How users profile it* (graph modes, profiles, the regression gate).
#
# Timings differ on every run: cells that print them are tagged `nbval-ignore-output`; the other cells print
# facts that do not change (compile counts, shapes, booleans).

# %%
import json
import tempfile
from pathlib import Path

import torch

import fia_kit
from fia_kit import GraphOptions, captured_graph, parse_call, profiling, roofline
from fia_kit.diagrams import agreement
from fia_kit.environment import detect

BACKEND = detect().default_backend()  # "npu" on an Ascend box with torch_npu, else "reference"
print("this notebook runs on backend:", BACKEND)

usable = detect().backends()
GRAPH = "npu-graph" if usable["npu-graph"][0] else "compiled"  # the graph-mode backend on this machine
print("graph mode runs on backend:", GRAPH)

# %% [markdown]
# ## TorchAir on the NPU
#
# TorchAir's ops (`torchair.ops.npu_fused_infer_attention_score[_v2]`, imported as `tng.ops`) have the same
# keywords as torch_npu's, with one difference: the lengths (`actual_seq_lengths`, `actual_seq_lengths_kv`,
# `actual_shared_prefix_len`; v2 `actual_seq_qlen`, `actual_seq_kvlen`) are **`Tensor?` (int64, on the
# device)** instead of `SymInt[]`. The reason is *tiling sinking*: with `tiling_schedule_optimize` the tiling
# runs on the device, so lengths already there need no host-to-device copy per step (spec section 1.4). The
# founding TorchAir page compiles a model like this:
#
# ```python
# import torchair as tng
# from torchair.configs.compiler_config import CompilerConfig
#
# config = CompilerConfig()
# config.mode = "max-autotune"                                   # GE graph mode; tng.ops need it
# config.experimental_config.tiling_schedule_optimize = True    # tiling on the device
# config.debug.graph_dump.type = "pbtxt"                         # dump the GE graph to look at
# npu_backend = tng.get_npu_backend(compiler_config=config)
# model = torch.compile(model, backend=npu_backend, dynamic=False)
# # inside model.forward:
# #   tng.ops.npu_fused_infer_attention_score(q, k, v, actual_seq_lengths=torch.tensor([50], device="npu"), ...)
# ```
#
# `fia_kit.run(call, "npu-graph", graph_options=GraphOptions(...))` does exactly that for one call
# (`fia_kit.backends.graph`): it respells the call for `tng.ops`, moves the lengths to the device as int64
# tensors, and compiles with those options. Off the box the same cell runs the compiled look-alike instead.

# %%
call = fia_kit.founding_example("v1")          # the founding page's call, seeded fp16
options = GraphOptions(mode="max-autotune", tiling_schedule_optimize=True)
print(options)
result = fia_kit.run(call, GRAPH, graph_options=options) if GRAPH == "npu-graph" else fia_kit.run(call, GRAPH)
print("graph-mode output:", tuple(result.attention_out.shape), result.attention_out.dtype)
agreement({f"{GRAPH} vs the reference": (result.attention_out.cpu(), fia_kit.run(call, "reference").attention_out)},
          *fia_kit.TOLERANCES[torch.float16])

# %% [markdown]
# ## The compiled look-alike ops (any machine)
#
# `fia_kit.backends.lookalike` registers the op's four schemas as real PyTorch custom ops,
# `torch.ops.fia_kit.npu_fused_infer_attention_score[_v2]` (torch_npu's schemas, lengths `SymInt[]`) and
# `torch.ops.fia_kit.air_npu_fused_infer_attention_score[_v2]` (TorchAir's, lengths `Tensor?`), each computed by
# the reference, with a fake (meta) kernel following spec section 4.3's output-shape rules. So
# `torch.compile(fullgraph=True)` traces a model calling it as **one graph node**, as GE sees TorchAir's op.
# `fia_kit.run(call, backend="compiled")` compiles such a call with `backend="aot_eager"` (cheap; "inductor"
# compiles for seconds).

# %%
graph = captured_graph(call, lengths="tensor")
targets = [str(node.target) for node in graph.graph.nodes if node.op == "call_function"]
print("FIA nodes in the captured graph:", [t for t in targets if "fused_infer_attention" in t])
print("graph inputs (placeholders):", sum(node.op == "placeholder" for node in graph.graph.nodes))

# %% [markdown]
# ### Lists recompile, tensors do not
#
# With `dynamic=False` (how TorchAir compiles), a Python int list is a **constant** baked into the graph: each
# new decode length compiles a new graph. An int64 tensor is a graph **input**: one graph serves every length.
# `fia_kit.profiling.recompiles` runs a decode step for several K/V lengths both ways and counts dynamo's
# compiles:

# %%
B, N, D = 2, 4, 64
g = torch.Generator().manual_seed(0)
q = torch.randn(B, N, 1, D, generator=g).half()
k, v = (torch.randn(B, N, 64, D, generator=g).half() for _ in range(2))
decode = parse_call("v1", q, k, v, dict(num_heads=N, input_layout="BNSD", actual_seq_lengths_kv=[10, 20]))
decode_plan = fia_kit.plan(decode)  # parsed and validated once: profiling and the roofline take the plan
steps = [[10, 20], [11, 21], [12, 22], [13, 23]]
counts = profiling.recompiles(decode, steps)
print(f"{len(steps)} decode steps -> compiles with int lists: {counts['list']}, with int64 tensors: {counts['tensor']}")

# %% [markdown]
# ## Profiling: `fia_kit.profiling.profile`
#
# `profile(call, backends)` warms each variant up (the first call includes compiling), times `repeats` calls
# (device-synchronised on the NPU), measures peak memory and, with `trace_dir`, writes a profiler trace per
# variant. On an Ascend box the variants are `npu`, `npu-graph` and `npu-graph-tiling`; here `reference`,
# `compiled` (tensor lengths) and `compiled-list`. The result is a table (also a plotly figure with
# `.figure()`) and saves itself as JSON atomically.

# %% tags=["nbval-ignore-output"]
# Timing output is ignored by nbval (tag nbval-ignore-output): seconds differ on every run.
variants = list(profiling.NPU_BACKENDS if BACKEND == "npu" else ("reference", "compiled"))
report = profiling.profile(decode_plan, variants, warmup=2, repeats=5)
report

# %%
print("rows:", [row.name for row in report.rows], "| calls timed per row:", [row.repeats for row in report.rows])
with tempfile.TemporaryDirectory() as folder:
    saved = report.save_json(Path(folder) / "profile.json")
    again = profiling.ProfileResult.load_json(saved)
    print("read back from JSON:", [r.name for r in again.rows], "| keys:", sorted(json.loads(saved.read_text()))[:2])

# %% tags=["nbval-ignore-output"]
# Figure output is ignored by nbval (tag nbval-ignore-output): plotly's JSON is machine-variable.
report.figure()

# %% [markdown]
# ## The graph-mode matrix: `fia_kit.graph_modes`
#
# The op's own tests run every case in five modes (spec 25.4): **eager**; **GE static graph**
# (`dynamic=False`); **dynamic** (`dynamic=True`); **tiling sink** (`tiling_schedule_optimize` with
# `dynamic=True` and `mark_static` on q/k/v, so only the lengths vary); and **aclgraph** (captured NPU graph,
# where the installed torch_npu has `torch_npu.npu.NPUGraph`). `graph_modes(plan, kv_steps)` runs a decode loop
# in each, with new K/V lengths every step, and reports per mode the graphs compiled, the host time per step
# (until the call returns: the launch cost), the step time, and how many length tensors each step sends from
# the host. Off an NPU the five NPU modes are listed as unavailable, each with the reason, and the two CPU
# look-alikes show the same recompile behaviour.

# %% tags=["nbval-ignore-output"]
# Timing output is ignored by nbval (tag nbval-ignore-output): milliseconds differ on every run.
modes = fia_kit.graph_modes(decode_plan, steps)
modes

# %%
for row in modes.rows:
    status = f"{row.compiles} compiles, {row.length_copies} length copies/step" if row.available else "unavailable"
    print(f"{row.mode:17s} {status}")

# %% [markdown]
# ### Where the host time goes
#
# * **`SymInt[]` lengths are host arrays.** torch_npu's op takes the actual lengths as int lists: in eager mode
#   the op tiles on the host from them every call; in a graph compiled with `dynamic=False` each new list is a
#   new constant, so every decode step with new lengths **recompiles** (or, in a captured graph, **rebinds**:
#   the graph's task arguments are updated before the replay). One user report measured a graph update at
#   3.7 ms against a replay at 1.2 ms per step. TorchAir's `tng.ops` take int64 **device tensors** instead: the
#   graph is compiled once and the lengths are graph inputs.
# * **Copies.** Device-tensor lengths still have to get to the device: one small host-to-device copy per length
#   per step when the model builds them from Python lists (the "length copies" column). With tiling sink the
#   kernel's tiling reads them on the device; without it GE tiles on the host and needs the values back.
# * **Bubbles.** torch_npu queues launches: the Python thread *enqueues* (`Enqueue@aclnnFusedInferAttentionScoreV3`)
#   and a second thread *dequeues* and launches (`Dequeue@...`, inside it `AscendCL@...`). When the dequeue
#   thread lags, the device idles before FIA; in graph decode an `EventWait` task (a cross-stream wait) adds a
#   gap on the device. Both show as FIA's **Wait Time(us)** and in `trace_view.json`, which
#   `fia_kit.read_ascend` reads.

# %% [markdown]
# ## Reading real profiles: `fia_kit.read_ascend`
#
# `read_ascend(path)` reads what torch_npu's profiler writes (a `*_ascend_pt` folder: its
# `ASCEND_PROFILER_OUTPUT/kernel_details.csv`, `trace_view.json`, `op_statistic.csv`) or an msprof
# `op_summary_*.csv`, with torch_npu 2.13.0's column names. It keeps the FIA kernels (name, start, duration,
# wait, block num, input shapes, the AI-core metrics present) with the host events around each one, and groups
# them per distinct Input Shapes. On an Ascend box the next cell profiles the decode call live; elsewhere it reads
# the **illustration** shipped in `examples/ascend_profile/` (synthetic files in the documented formats, written
# by `examples/ascend_profile/make_example.py`: not a measurement).

# %%
EXAMPLES = Path("..") / "examples" / "ascend_profile"
if BACKEND == "npu":
    live = profiling.variants(decode_plan, ["npu"])["npu"]
    source = profiling.write_trace(*live, Path(tempfile.mkdtemp()), "decode")
    print("profiled live into", source)
else:
    source = EXAMPLES / "decode_baseline_ascend_pt"
    print("reading the illustration:", (source / "ILLUSTRATION.txt").read_text().strip())
prof = fia_kit.read_ascend(source)
print(prof.table())

# %%
first = prof.kernels[0]
print("first FIA kernel:", first.name[:40], "| block num", first.block_num, "| step", first.step)
print("AI-core metrics present:", prof.metrics())
print("host events around it:", [(event.kind, event.name.split("@")[0]) for event in first.host])
if BACKEND != "npu":
    dequeue = [e for k in prof.kernels for e in k.host if e.kind == "dequeue"]
    waits = [e for k in prof.kernels for e in k.host if e.kind == "event_wait"]
    print(f"EventWait before FIA: {len(waits)} tasks, median {sorted(e.duration_us for e in waits)[len(waits) // 2]:.1f} us")
    print(f"Dequeue@ events: {len(dequeue)}; wait share of the 1024-token shape: {prof.shape_table()[0].wait_share:.0%}")

# %% tags=["nbval-ignore-output"]
# Figure output is ignored by nbval (tag nbval-ignore-output): plotly's JSON is machine-variable.
prof.timeline_figure()

# %% tags=["nbval-ignore-output"]
# Figure output is ignored by nbval (tag nbval-ignore-output): plotly's JSON is machine-variable.
prof.kv_figure()

# %% [markdown]
# ### Did my change regress? `fia_kit.compare_runs`
#
# The op's team gates performance at 8 % against a baseline (spec 25.4). `compare_runs(baseline, new)`
# compares the median duration per shape; it takes `read_ascend` results, the kit's own `ProfileResult`
# (or its JSON), or paths to either. The illustration's "new" run is 12 % slower at 4096 keys:

# %%
gate = fia_kit.compare_runs(EXAMPLES / "decode_baseline_ascend_pt", EXAMPLES / "decode_new_ascend_pt")
print(gate.table())
print("verdict:", "pass" if gate.passed else "FAIL: a shape regressed beyond the threshold")

# %% [markdown]
# ## Roofline: is the call memory- or compute-bound?
#
# `roofline.call_cost(call)` counts the work exactly: FLOPs over the in-band (query, key) pairs
# (`4 · D` per pair and head: `q·kᵀ` and `P·v`) and a lower bound of the bytes moved (each tensor read once,
# the output written once). Its ratio, the *arithmetic intensity*, placed against a device's peaks tells which
# roof limits the call. The kit has no device presets: measure this machine (`measure_cpu_peaks`) or type in
# your NPU's datasheet numbers as a `DevicePeaks`.

# %%
cost = roofline.call_cost(decode_plan)
by_hand = 4 * N * D * (10 + 20)           # decode: one query row per batch, 10 and 20 keys
print("FLOPs:", cost.flops, "| by hand, 4 · N · D · (10 + 20):", by_hand)
print("bytes (lower bound):", cost.bytes, {name: n for name, n in cost.bytes_by_tensor.items() if n})
print("intensity (FLOP/byte):", round(cost.intensity, 3), "-> decode is memory-bound on any device")

# %% tags=["nbval-ignore-output"]
# Timing output is ignored by nbval (tag nbval-ignore-output): seconds, peaks and the bound they give differ on
# every run (load and thread count move the CPU's two peaks, and so its ridge, by different amounts).
peaks = roofline.measure_cpu_peaks(size=512, copy_mib=32, repeats=3)
seconds = report.row("reference").median_s
place = roofline.roofline(decode_plan, seconds, peaks, label="decode, reference")
print(place.table())
place.figure()

# %% [markdown]
# Which side of the ridge a call lands on depends on its intensity and the device's two peaks only, not on the
# time it took: with peaks you type in, the verdict is fixed. The peaks below are round illustrative numbers for
# an accelerator, not any device's datasheet; measured CPU peaks move with load, so the cell above says whatever
# this machine measured just now.

# %%
typed = roofline.DevicePeaks("illustrative accelerator", flops_per_s=300e12, bytes_per_s=1.5e12)
print(f"ridge of {typed.name}: {typed.ridge:g} FLOP/byte; decode intensity: {cost.intensity:.3f} FLOP/byte")
print("bound under those peaks:", roofline.roofline(decode_plan, seconds=1e-3, peaks=typed).bound,
      "(any seconds: the bound compares intensity with the ridge)")
print("ridge of DevicePeaks('my NPU') without numbers:", roofline.DevicePeaks("my NPU").ridge,
      "(no presets: enter your NPU's datasheet peaks)")

# %% [markdown]
# ## Summary
#
# * TorchAir: `config.mode = "max-autotune"`, `tiling_schedule_optimize`, `graph_dump`; lengths as int64 device
#   tensors (`fia_kit.builders.length_tensor`).
# * Elsewhere: `fia_kit.run(call, backend="compiled")`; int lists recompile per value, tensors do not.
# * `fia_kit.profiling.profile` for timings, memory and traces; `graph_modes` for the graph-mode matrix
#   (compiles, host time, length copies); `read_ascend` for torch_npu / msprof profiles; `compare_runs` for the
#   8 % regression gate; `fia_kit.roofline` for exact FLOPs, minimum bytes and the roofline.
#
# Next: [10 · validating the real op](10_validating_the_real_op.ipynb).
