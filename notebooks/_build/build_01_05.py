"""Write (and execute) teaching notebooks 01-05 from code, so they can be reviewed and regenerated.

    .venv/bin/python notebooks/_build/build_01_05.py            # write, execute on this machine's backend, save
    .venv/bin/python notebooks/_build/build_01_05.py --no-execute 03  # write only notebook 03, without outputs

Each notebook is a list of cells built with nbformat. Executing runs them with nbclient in ``notebooks/`` (the
kernel of this Python environment), then strips what must not be committed: ``metadata.widgets`` (megabytes of
widget state when a cell displays widgets) and per-cell execution timestamps. Commit the notebooks executed on the
reference backend: nbval (``make test``) re-runs them and compares every output.

Conventions shared by every notebook:
* the first code cell picks the backend (``fia_kit.environment.detect().default_backend()``) and prints it as
  "backend: NAME" (``notebooks/sanitize.cfg`` section [fia-backend] masks NAME, so an Ascend box passes nbval too);
* checks print booleans, shapes and counts, never raw floats, so they read the same on any backend;
* cells that display plotly figures or widgets carry the tag ``nbval-ignore-output`` (their JSON holds base64
  float arrays and random ids: machine-variable renderings that nbval cannot sanitize).
"""

from __future__ import annotations

import sys

import nbformat
from nbkit import code, main, md, setup

# ------------------------------------------------------------------------------------------------ 01 quickstart

def quickstart() -> list[nbformat.NotebookNode]:
    return [
        md("""
        # 1 · Quickstart: the founding TorchAir example, re-created

        FIA (`torch_npu.npu_fused_infer_attention_score`, its `_v2` twin and TorchAir's `tng.ops` versions) computes,
        for every batch `b` and query head `n`, `softmax(scale · q·kᵀ + masks) · v` over the *valid* keys of that batch
        (spec section 0, *One-paragraph summary*). The kit's reference implementation is the op on any machine; on an
        Ascend box the same cells run torch_npu's op.

        This notebook re-creates the example of the project's founding document, a TorchAir page
        (`shared/seed/npu_fused_infer_attention_score_v2.md`), and reads its output row by row.

        Spec (`../shared/spec/fia_spec.md`, next to the repository):
        section 1.3 *The founding document's v2 signature vs the real one*, section 1.4 *TorchAir (`tng.ops`) variants*,
        section 4.3 *Output-shape inference*, section 5.4 *What happens outside the valid lengths*,
        section 8 *softmax_lse*, section 14 *Shared prefix*.
        """),
        setup(stdlib="import math"),
        md("""
        ## The call

        The page builds a BNSD query of 164 rows, keys/values of 1024 rows and a *shared prefix* of 1024 rows, then
        calls (inside a `torch.compile`d model, see below):

        ```python
        tng.ops.npu_fused_infer_attention_score(q, k, v,
            actual_seq_lengths=actualSeqLengths,            # tensor([50]) on the NPU
            actual_seq_lengths_kv=actualSeqLengthkvs,       # tensor([512])
            key_shared_prefix=k_prefix, value_shared_prefix=v_prefix,
            actual_shared_prefix_len=actualSeqLengthsPrefix,  # tensor([50])
            num_heads=8, input_layout="BNSD", scale=1/math.sqrt(128.0), pre_tokens=65535, next_tokens=65535)
        ```

        The lengths are **int64 tensors**: TorchAir's schema types them `Tensor?` so that tiling, which runs on the
        device in graph mode, needs no host-to-device copy (spec section 1.4); `fia_kit.builders.length_tensor(values,
        device)` makes one. torch_npu's eager op takes int lists instead; the kit accepts both, and `fia_kit.run`
        hands each backend the type its op wants. Inputs here are seeded float16, the op's dtype.
        """),
        code("""
        g = torch.Generator().manual_seed(0)
        q = torch.randn(1, 8, 164, 128, generator=g, dtype=torch.float16)         # (B, N, S_q, D)
        k = torch.randn(1, 8, 1024, 128, generator=g, dtype=torch.float16)        # (B, N, S_kv, D)
        v = torch.randn(1, 8, 1024, 128, generator=g, dtype=torch.float16)
        k_prefix = torch.randn(1, 8, 1024, 128, generator=g, dtype=torch.float16)  # (1, N, P_S, D)
        v_prefix = torch.randn(1, 8, 1024, 128, generator=g, dtype=torch.float16)
        scale = 1 / math.sqrt(128.0)

        options = dict(
            actual_seq_lengths=torch.tensor([50]),        # valid query rows of batch 0
            actual_seq_lengths_kv=torch.tensor([512]),    # valid own keys of batch 0
            key_shared_prefix=k_prefix, value_shared_prefix=v_prefix,
            actual_shared_prefix_len=torch.tensor([50]),  # valid prefix keys, shared by every batch
            num_heads=8, input_layout="BNSD", scale=scale, pre_tokens=65535, next_tokens=65535,
        )
        for name, t in [("query", q), ("key", k), ("value", v), ("key_shared_prefix", k_prefix)]:
            print(f"{name:18s} {tuple(t.shape)} {t.dtype}")
        """),
        md("""
        ## Run it (eager)

        `parse_call` reads the keywords once (as the v1 op spells them); `fia_kit.run` executes the call on a
        backend and returns the op's two outputs (plus timings, not shown: they differ on every run). On an Ascend box `BACKEND` is `"npu"` and this is torch_npu's eager op (lengths
        passed as lists, as its schema wants); elsewhere it is the kit's reference.
        """),
        code("""
        call = parse_call("v1", q, k, v, options)
        result = fia_kit.run(call, BACKEND)
        out, lse = result.attention_out.cpu(), result.softmax_lse.cpu()
        print("attention_out:", tuple(out.shape), out.dtype)
        print("softmax_lse:  ", tuple(lse.shape), lse.dtype, "<- empty: softmax_lse_flag was not set")
        """),
        md("""
        The output has the query's shape and dtype (spec section 4.3: output D = value's D, dtype = the query's).
        The LSE is an **empty float32 tensor of shape (0,)** because it was not requested: that is what torch_npu
        returns from branch 7.2.0 on (older versions and the docs say shape (1,); spec section 22, row 2).

        `fia_kit.compare` runs a call on backends and checks them against the reference on the rows the spec
        defines (fp16: `atol = rtol = 1e-3`). `fia_kit.npu_fused_infer_attention_score` is the reference op under
        torch_npu's own signature, so the page's call can also be written directly:
        """),
        code("""
        atol, rtol = TOLERANCES[torch.float16]  # (1e-3, 1e-3): the fp16 tolerance peers use
        print("max error vs reference within tolerance:", fia_kit.compare(call, [BACKEND]).passed)
        out_direct, _ = fia_kit.npu_fused_infer_attention_score(q, k, v, **options)
        print("direct reference call agrees with the backend's output:",
              torch.allclose(out_direct.float(), out.float(), atol=atol, rtol=rtol))
        """),
        md("""
        ## What the output means, row by row

        Three lengths decide everything (spec section 2 names them):

        * `L_q = 50`: only query rows 0..49 of the 164 are valid. Rows 50..163 are **not computed and written as 0**
          (spec section 5.4: the kernel zero-fills the output whenever an actual length differs from S_q).
        * `P = 50`: every batch first attends to the first 50 rows of the shared prefix (spec section 14).
        * `L_kv = 512`: then to the first 512 of its own 1024 keys.

        So batch 0's key set is `prefix[:50] + kv[:512]`: **562 keys**, prefix first. `pre_tokens`/`next_tokens`
        are **ignored**: `sparse_mode` 0 without `atten_mask` has no band (spec section 6.3). `explain` validates a
        call and returns its resolved geometry without computing anything:
        """),
        code("""
        problem = fia_kit.reference.explain("v1", q, k, v, **options)
        plan = problem.batches[0]
        print("valid query rows L_q:      ", plan.q_len)
        print("shared prefix keys P:      ", problem.prefix_len)
        print("own keys L_kv:             ", plan.kv_len)
        print("keys per query row P+L_kv: ", problem.prefix_len + plan.kv_len)
        print("band (None = unbounded):   ", plan.band)
        """),
        code("""
        print("rows 50..163 are all zero:   ", bool((out[:, :, 50:] == 0).all()))
        print("rows 0..49 have no zero row: ", bool((out[:, :, :50].abs().amax(-1) > 0).all()))
        """),
        md("""
        ### Check against PyTorch's SDPA on exactly those 562 keys

        An independent computation: `torch.nn.functional.scaled_dot_product_attention` over the concatenation
        `prefix[:50] + kv[:512]`, in float32. If the op used any other key set (the whole prefix, all 1024 own
        keys, or the own keys before the prefix), the rows would not match: the last three lines show that.
        """),
        code("""
        def sdpa_rows(keys, values):
            return torch.nn.functional.scaled_dot_product_attention(
                q[:, :, :50].float(), keys.float(), values.float(), scale=scale)

        keys = torch.cat([k_prefix[:, :, :50], k[:, :, :512]], dim=2)
        values = torch.cat([v_prefix[:, :, :50], v[:, :, :512]], dim=2)
        expected = sdpa_rows(keys, values)
        matches = lambda ref: torch.allclose(out[:, :, :50].float(), ref, atol=atol, rtol=rtol)  # noqa: E731
        print("key set size:", keys.shape[2])
        print("rows 0..49 == SDPA on prefix[:50] + kv[:512]:", matches(expected))
        print("... == SDPA on the whole prefix + kv[:512]:  ", matches(sdpa_rows(torch.cat([k_prefix, k[:, :, :512]], 2),
                                                                           torch.cat([v_prefix, v[:, :, :512]], 2))))
        print("... == SDPA on prefix[:50] + all 1024 keys:  ", matches(sdpa_rows(torch.cat([k_prefix[:, :, :50], k], 2),
                                                                           torch.cat([v_prefix[:, :, :50], v], 2))))
        print("... == SDPA on prefix[:50] alone:            ", matches(sdpa_rows(k_prefix[:, :, :50], v_prefix[:, :, :50])))
        """),
        md("""
        ## The LSE output

        With `softmax_lse_flag=True` (v2: `return_softmax_lse=True`) the op also returns the log-sum-exp of each
        row's scaled scores: float32, shape `(B, N_q, S_q, 1)` for this layout (`(T, N_q, 1)` for TND/NTD), and in
        the **natural log** (spec section 8; FlashInfer's LSE is base 2: divide by ln 2 to compare). Context-parallel
        callers merge partial outputs with it. Rows beyond `L_q` have no defined LSE (spec section 8: "unspecified";
        the reference writes +inf), so only rows 0..49 are checked.
        """),
        code("""
        lse_result = fia_kit.run(parse_call("v1", q, k, v, {**options, "softmax_lse_flag": True}), BACKEND)
        lse = lse_result.softmax_lse.cpu()
        print("softmax_lse:", tuple(lse.shape), lse.dtype)
        scores = scale * q[:, :, :50].float() @ keys.float().transpose(-1, -2)  # (1, 8, 50, 562)
        expected_lse = torch.logsumexp(scores, dim=-1, keepdim=True)              # natural log
        print("rows 0..49 == logsumexp(scale * q k^T) (natural log):",
              torch.allclose(lse[:, :, :50], expected_lse, atol=1e-3, rtol=1e-3))
        print("outputs unchanged by asking for the LSE:",
              torch.allclose(lse_result.attention_out.cpu().float(), out.float(), atol=atol, rtol=rtol))
        """),
        md("""
        ## Graph mode

        The page runs the op inside `torch.compile(model, backend=tng.get_npu_backend(...), dynamic=False,
        fullgraph=True)`: `tng.ops.*` only work in TorchAir's max-autotune (GE graph) mode and raise
        `NotImplementedError` in eager mode (spec section 1.4). The kit picks the closest graph mode this machine has:

        * on an Ascend box, `npu-graph`: TorchAir graph mode with int64 device-tensor lengths;
        * elsewhere, `compiled`: `torch.compile(fullgraph=True)` of a look-alike op with TorchAir's schema (lengths
          are graph inputs, as on the NPU), computed by the reference;
        * if `torch.compile` is unusable here, the reference itself.
        """),
        code("""
        usable = {name: ok for name, (ok, _) in detect().backends().items()}
        if BACKEND == "npu" and usable["npu-graph"]:
            GRAPH_BACKEND = "npu-graph"
        elif usable["compiled"]:
            GRAPH_BACKEND = "compiled"
        else:
            GRAPH_BACKEND = "reference"
        print("graph mode runs on backend:", GRAPH_BACKEND)

        graph = fia_kit.run(call, GRAPH_BACKEND)
        print("graph-mode attention_out:", tuple(graph.attention_out.shape), graph.attention_out.dtype)
        print("graph mode == eager:", torch.allclose(graph.attention_out.cpu().float(), out.float(), atol=atol, rtol=rtol))
        print("graph mode within tolerance of the reference:", fia_kit.compare(call, [GRAPH_BACKEND]).passed)
        """),
        md("""
        ## The page is titled v2, but its names are an old document's (spec section 1.3)

        The founding page documents `npu_fused_infer_attention_score_v2` with `actual_seq_lengths` /
        `actual_seq_lengths_kv`, `num_key_value_heads=1` and an `inner_precise` without default. That text matches
        an **older TorchAir document**, not any code. The real v2 (torch_npu and TorchAir schemas, current docs):

        | founding page (old doc) | real v2 | v1 |
        |---|---|---|
        | `actual_seq_lengths` | `actual_seq_qlen` | `actual_seq_lengths` |
        | `actual_seq_lengths_kv` | `actual_seq_kvlen` | `actual_seq_lengths_kv` |
        | `num_key_value_heads=1` | `num_key_value_heads=0` (0 = same as the query heads) | same as v2 |
        | `inner_precise` (no default) | `inner_precise=0` | same |
        | (`actual_shared_prefix_len` in the prose) | no shared prefix in v2 at all | `actual_shared_prefix_len` |

        Other renames: `num_heads` → `num_query_heads`, `scale` → `softmax_scale`, `softmax_lse_flag` →
        `return_softmax_lse` (full table: spec section 1.6). Note also that the page's *example* calls the **v1**
        `tng.ops.npu_fused_infer_attention_score`: the shared prefix exists only in v1.

        The kit's v2 accepts the page's names as aliases (spec section 1.3 recommends it). This is the kit's
        extension: torch_npu's v2 rejects them, so the alias cell runs on the reference.
        """),
        code("""
        v2_options = dict(num_query_heads=8, input_layout="BNSD", softmax_scale=scale)
        out_v2 = fia_kit.run(parse_call("v2", q, k, v, {**v2_options, "actual_seq_qlen": [50], "actual_seq_kvlen": [512]}),
                     BACKEND).attention_out.cpu()
        out_alias, _ = fia_kit.npu_fused_infer_attention_score_v2(
            q, k, v, **v2_options, actual_seq_lengths=[50], actual_seq_lengths_kv=[512])
        print("v2 output:", tuple(out_v2.shape))
        print("the page's names give the same output:",
              torch.allclose(out_alias.float(), out_v2.float(), atol=atol, rtol=rtol))
        """),
        md("Giving both spellings of the same length is an error, raised before any compute:"),
        code("""
        try:
            fia_kit.npu_fused_infer_attention_score_v2(q, k, v, **v2_options, actual_seq_qlen=[50],
                                                       actual_seq_lengths=[50])
        except fia_kit.FIAArgumentError as error:
            print(type(error).__name__, "->", error)
        """),
        md("""
        `num_key_value_heads` defaults to **0**, meaning "as many K/V heads as query heads". The page's default of 1
        would silently turn this multi-head call into multi-query attention; the kit checks the number against the
        key's head axis instead:
        """),
        code("""
        print("v2 default num_key_value_heads:", fia_kit.signatures.keyword_defaults("v2")["num_key_value_heads"])
        print("resolved K/V heads for the call above:", fia_kit.reference.explain("v2", q, k, v, **v2_options).num_kv_heads)
        try:
            fia_kit.npu_fused_infer_attention_score_v2(q, k, v, **v2_options, num_key_value_heads=1)
        except fia_kit.FIAArgumentError as error:
            print(type(error).__name__, "->", error)
        """),
        md("The shared prefix has no v2 spelling, so this v1 call cannot be respelled as v2:"),
        code("""
        try:
            call.keywords("v2")
        except fia_kit.FIAArgumentError as error:
            print(type(error).__name__, "->", error)
        """),
        md("""
        ## Summary

        * Valid rows and keys come from the actual lengths: rows `≥ L_q` are zeros; each valid row attends to
          `prefix[:P] + kv[:L_kv]`.
        * The LSE is float32, natural log, `(B, N_q, S_q, 1)` when asked for, `(0,)` otherwise.
        * TorchAir takes the lengths as int64 device tensors and needs graph mode.
        * Real v2 names: `actual_seq_qlen` / `actual_seq_kvlen`, `num_key_value_heads=0`.

        Next: [02 · layouts](02_layouts.ipynb).
        """),
    ]


# ------------------------------------------------------------------------------------------------ 02 layouts

def layouts() -> list[nbformat.NotebookNode]:
    return [
        md("""
        # 2 · Layouts: BSH, BSND, BNSD, TND, NTD and the two-part names

        `input_layout` says which axis of query, key and value is batch (B), sequence (S), head (N) and head dim (D);
        packed layouts put every batch's tokens on one axis T. A two-part name `X_Y` means the inputs lie as `X` and
        the output is written as `Y`: the op transposes internally.

        Spec (`../shared/spec/fia_spec.md`): section 4.1 *Meaning of two-part names*, section 4.2 *Layout table*,
        section 4.3 *Output-shape inference*, section 5.2 *Packed layouts*.
        """),
        setup(kit="from fia_kit import builders, figures, layouts"),
        md("""
        ## The table

        `fia_kit.layouts.INPUT_LAYOUTS` lists every `input_layout` of spec section 4.2 with its input part and its
        output part. (`NSD` is undocumented: it appears only in the op-plugin/TorchAir layout parsers.)
        """),
        code("""
        for name, (part_in, part_out) in layouts.INPUT_LAYOUTS.items():
            axes_in = ", ".join(layouts.axis_names(part_in))
            print(f"{name:10s} inputs ({axes_in:10s}) -> output {part_out}")
        """),
        md("""
        ## One query, five layouts

        The kit works internally on one canonical form, `(B, N, S, D)`. `to_canonical` / `from_canonical` /
        `convert_layout` are the only code that knows how each layout lies in memory. In BSH the head axis is folded
        into `H = N·D`: head `n` occupies columns `[n·D, (n+1)·D)`, so the op needs `num_heads` to split it.
        """),
        code("""
        B, N, S, D = 2, 4, 6, 64
        g = torch.Generator().manual_seed(0)
        q_bnsd = torch.randn(B, N, S, D, generator=g, dtype=torch.float16)
        for part in ("BNSD", "BSND", "BSH"):
            print(f"{part:5s}", tuple(layouts.convert_layout(q_bnsd, "BNSD", part, num_heads=N).shape))
        bsh = layouts.convert_layout(q_bnsd, "BNSD", "BSH", num_heads=N)
        print(f"BSH columns [{D}, {2 * D}) are head 1:", torch.equal(bsh[:, :, D:2 * D], q_bnsd[:, 1]))
        """),
        md("""
        The figure shows the memory order of each layout: one cell per D-vector, coloured by head. BNSD keeps each
        head's rows together; BSH/BSND interleave heads token by token.
        """),
        code("""
        for name in ("BNSD", "BSND", "BSH"):
            figures.layout_figure(name, batch=2, seq=3, heads=2).show()
        """, "figure"),
        md("""
        ## The op gives the same attention in every layout

        Run one problem (here with grouped K/V heads: 4 query heads, 2 K/V heads) in BNSD, BSND and BSH, convert the
        outputs back to BNSD and compare.
        """),
        code("""
        N_KV, S_KV = 2, 10
        k_bnsd = torch.randn(B, N_KV, S_KV, D, generator=g, dtype=torch.float16)
        v_bnsd = torch.randn(B, N_KV, S_KV, D, generator=g, dtype=torch.float16)
        atol, rtol = TOLERANCES[torch.float16]

        def attention(part):
            q, k, v = (layouts.convert_layout(t, "BNSD", part, num_heads=n)
                       for t, n in ((q_bnsd, N), (k_bnsd, N_KV), (v_bnsd, N_KV)))
            call = parse_call("v1", q, k, v, dict(num_heads=N, num_key_value_heads=N_KV, input_layout=part,
                                                  scale=D ** -0.5))
            return fia_kit.run(call, BACKEND).attention_out.cpu()

        outputs = {part: attention(part) for part in ("BNSD", "BSND", "BSH")}
        for part, out in outputs.items():
            back = layouts.convert_layout(out, part, "BNSD", num_heads=N)
            same = torch.allclose(back.float(), outputs["BNSD"].float(), atol=atol, rtol=rtol)
            print(f"{part:5s} output {tuple(out.shape)}, equals the BNSD result: {same}")
        """),
        md("""
        ## Packed layouts: TND and NTD

        Packed layouts carry no batch axis. Batch `b`'s tokens are rows `[cum[b-1], cum[b])` of T, and
        `actual_seq_lengths` is then **required and cumulative** (spec section 5.2; notebook 04 covers lengths).
        Here batch 0 uses 4 query tokens and 6 keys, batch 1 uses 6 query tokens and 10 keys.
        `fia_kit.builders.pack_sequences` packs per-batch `(N, L_b, D)` rows into TND or NTD (TND with N first)
        and returns the cumulative lengths.
        """),
        code("""
        q_lens, kv_lens = [4, 6], [6, 10]

        def pack(x, lens, part):
            \"\"\"The first lens[b] rows of each batch of a canonical (B, N, S, D) tensor, packed as ``part``.\"\"\"
            return builders.pack_sequences([x[b, :, :n] for b, n in enumerate(lens)], part)[0]

        packed = {part: [pack(t, lens, part) for t, lens in ((q_bnsd, q_lens), (k_bnsd, kv_lens), (v_bnsd, kv_lens))]
                  for part in ("TND", "NTD")}
        cum_q, cum_kv = builders.cumulative(q_lens), builders.cumulative(kv_lens)
        print("TND query", tuple(packed["TND"][0].shape), " NTD query", tuple(packed["NTD"][0].shape))
        print("cumulative lengths: query", cum_q, " key/value", cum_kv)

        padded = fia_kit.run(parse_call("v1", q_bnsd, k_bnsd, v_bnsd, dict(
            num_heads=N, num_key_value_heads=N_KV, input_layout="BNSD", scale=D ** -0.5,
            actual_seq_lengths=q_lens, actual_seq_lengths_kv=kv_lens)), BACKEND).attention_out.cpu()
        for part, (q, k, v) in packed.items():
            out = fia_kit.run(parse_call("v1", q, k, v, dict(
                num_heads=N, num_key_value_heads=N_KV, input_layout=part, scale=D ** -0.5,
                actual_seq_lengths=cum_q, actual_seq_lengths_kv=cum_kv)), BACKEND).attention_out.cpu()
            print(f"{part}: output {tuple(out.shape)}, equals the padded BNSD result packed the same way:",
                  torch.allclose(out.float(), pack(padded, q_lens, part).float(), atol=atol, rtol=rtol))
        """),
        code("""
        figures.layout_figure("TND", batch=2, seq=3, heads=2).show()
        """, "figure"),
        md("""
        ## Two-part layouts: the output is written in another layout

        `BNSD_BSND` reads BNSD inputs and writes a BSND output; `BSH_NBSD` writes `(N, B, S, D)`; `TND_NTD` writes
        NTD. Key/value follow the **input** part. The LSE shape follows the query layout too: `(B, N, S, 1)`, or
        `(T, N, 1)` for the packed family, whatever the output part is (spec section 4.3).

        `explain` resolves the shapes without computing. Several two-part layouts are restricted on the NPU (spec
        section 4.2's notes: e.g. `BNSD_NBSD` only for 1 < S_q ≤ 16, the `_NBSD` family mainly for MLA with D = 512),
        so this table is computed by the reference's shape rules on every machine.
        """),
        code("""
        shapes = {"BNSD": q_bnsd, "BSND": layouts.convert_layout(q_bnsd, "BNSD", "BSND", N),
                  "BSH": layouts.convert_layout(q_bnsd, "BNSD", "BSH", N)}
        kv_shapes = {"BNSD": k_bnsd, "BSND": layouts.convert_layout(k_bnsd, "BNSD", "BSND", N_KV),
                     "BSH": layouts.convert_layout(k_bnsd, "BNSD", "BSH", N_KV)}
        print(f"{'input_layout':12s} {'query':16s} {'attention_out':16s} softmax_lse")
        for name, (part_in, part_out) in layouts.INPUT_LAYOUTS.items():
            if part_in == part_out or part_in not in shapes:
                continue
            problem = fia_kit.reference.explain("v1", shapes[part_in], kv_shapes[part_in], kv_shapes[part_in],
                                                num_heads=N, num_key_value_heads=N_KV, input_layout=name,
                                                softmax_lse_flag=True)
            print(f"{name:12s} {str(tuple(shapes[part_in].shape)):16s} {str(problem.out_shape):16s} {problem.lse_shape}")
        q, k, v = packed["TND"]
        for name in ("TND", "TND_NTD"):
            problem = fia_kit.reference.explain("v1", q, k, v, num_heads=N, num_key_value_heads=N_KV, input_layout=name,
                                                actual_seq_lengths=cum_q, actual_seq_lengths_kv=cum_kv,
                                                softmax_lse_flag=True)
            print(f"{name:12s} {str(tuple(q.shape)):16s} {str(problem.out_shape):16s} {problem.lse_shape}")
        """),
        md("""
        A two-part layout is exactly the one-part computation followed by a transpose of the output. `BNSD_BSND` is
        the common one (documented for S_q > 1 on A2/A3):
        """),
        code("""
        out = fia_kit.run(parse_call("v1", q_bnsd, k_bnsd, v_bnsd, dict(num_heads=N, num_key_value_heads=N_KV,
                                                                 input_layout="BNSD_BSND", scale=D ** -0.5)),
                  BACKEND).attention_out.cpu()
        print("BNSD_BSND output", tuple(out.shape), "== BNSD output converted to BSND:",
              torch.allclose(out.float(), layouts.convert_layout(outputs["BNSD"], "BNSD", "BSND", N).float(),
                             atol=atol, rtol=rtol))
        """),
        code("""
        figures.layout_figure("BNSD_BSND", batch=2, seq=3, heads=2).show()
        """, "figure"),
        md("""
        ## Wrong ranks and head counts are errors

        The query rank must match the layout (spec section 4.2), and in layouts with an explicit head axis
        `num_heads` must equal that axis (spec section 10):
        """),
        code("""
        for options in (dict(input_layout="BSH", num_heads=N),            # a 4-D query in a 3-D layout
                        dict(input_layout="BNSD", num_heads=8)):          # the query has 4 heads
            try:
                fia_kit.reference.explain("v1", q_bnsd, k_bnsd, v_bnsd, num_key_value_heads=N_KV, **options)
            except fia_kit.FIAArgumentError as error:
                print(type(error).__name__, "->", error)
        """),
        md("""
        ## Summary

        * One-part layouts differ only in memory order; the attention is the same.
        * BSH needs `num_heads` to split `H`; BSND/BNSD need it to equal the head axis.
        * TND/NTD pack batches along T and need cumulative lengths.
        * `X_Y` reads `X`, writes `Y`; the LSE follows the query layout.

        Next: [03 · masks and sparse modes](03_masks_and_sparse_modes.ipynb).
        """),
    ]


# ------------------------------------------------------------------------------------------------ 03 masks

MASK_MAP = '''
def visibility_map(problem, b=0):
    """Text map of batch b: '#' visible, 'm' hidden by atten_mask, '.' outside the band, ' ' padding."""
    symbols = {figures.VISIBLE: "#", figures.MASKED: "m", figures.OUTSIDE_BAND: ".", figures.PADDING: " "}
    codes = figures.visibility_codes(problem, b)
    for i, row in enumerate(codes.tolist()):
        print(f"row {i:2d} |" + "".join(symbols[c] for c in row) + "|")
'''


def explorer_cells() -> list[nbformat.NotebookNode]:
    """The interactive explorer on notebook 03's mode-3 case."""
    return [
        md("""
        ### Try it: the explorer

        Change `sparse_mode`, `pre_tokens`/`next_tokens`, the lengths or the prefix and watch the map, the
        probabilities and the output follow (live in JupyterLab; a static copy of a notebook shows no widgets).
        """),
        code("""
        from fia_kit.case import Case

        case = Case().replace(layout="BNSD", q_lens=(S_Q,), kv_lens=(S_KV,), heads=N, kv_heads=N, head_dim=D,
                              dtype=torch.float16, sparse_mode=3)
        fia_kit.explore(case, backend=BACKEND)
        """, "widget"),
    ]


def masks() -> list[nbformat.NotebookNode]:
    return [
        md("""
        # 3 · Masks and sparse modes 0-4

        Which keys a query row sees is decided by `sparse_mode`, `atten_mask`, `pre_tokens` and `next_tokens`.
        This notebook shows each mode's visibility map, checks each against an explicit mask applied with SDPA, and
        covers rows that see no key at all.

        Spec (`../shared/spec/fia_spec.md`): section 6.1 *atten_mask values and dtypes*, section 6.3 *Definitions of
        sparse modes*, section 6.4 *The compressed 2048×2048 mask*, section 7 *Fully masked rows and inner_precise*.
        """),
        setup(kit="from fia_kit import figures, masks", after=MASK_MAP),
        md("""
        Conventions: **True / 1 in `atten_mask` means masked out** (the kernel writes −1e12 over that score).
        Coordinates are local to a batch: query row `i` counts from its first valid row, key `j` from its first key
        (the shared prefix, if any, comes first). In the maps below `#` is visible, `m` hidden by the mask, `.` outside
        the mode's band.

        A problem with more keys than queries makes the alignment visible: `L_q = 6`, `L_kv = 10`.
        """),
        code("""
        g = torch.Generator().manual_seed(0)
        B, N, S_Q, S_KV, D = 1, 2, 6, 10, 16
        q = torch.randn(B, N, S_Q, D, generator=g, dtype=torch.float16)
        k = torch.randn(B, N, S_KV, D, generator=g, dtype=torch.float16)
        v = torch.randn(B, N, S_KV, D, generator=g, dtype=torch.float16)
        base = dict(num_heads=N, input_layout="BNSD", scale=D ** -0.5)
        atol, rtol = TOLERANCES[torch.float16]
        template = masks.compressed_causal_mask()  # what modes 2-4 require, see below
        i = torch.arange(S_Q).view(-1, 1)
        j = torch.arange(S_KV).view(1, -1)

        def check(options, visible):
            \"\"\"Run the call on BACKEND; compare with SDPA restricted to ``visible`` (S_q, S_kv) (True = attend).\"\"\"
            out = fia_kit.run(parse_call("v1", q, k, v, {**base, **options}), BACKEND).attention_out.cpu().float()
            expected = torch.nn.functional.scaled_dot_product_attention(
                q.float(), k.float(), v.float(), attn_mask=visible, scale=D ** -0.5)
            return torch.allclose(out, expected, atol=atol, rtol=rtol)

        def explain(**options):
            return fia_kit.reference.explain("v1", q, k, v, **base, **options)
        """),
        md("""
        ## Mode 0 without a mask: everything visible, pre/next ignored

        The default. `pre_tokens`/`next_tokens` are forced to INT_MAX when there is no mask (spec section 6.3), so
        passing a narrow band changes nothing:
        """),
        code("""
        visibility_map(explain(pre_tokens=0, next_tokens=0))
        print("sparse_mode 0, no mask, pre=next=0 == full attention:", check(dict(pre_tokens=0, next_tokens=0),
                                                                          torch.ones(S_Q, S_KV, dtype=torch.bool)))
        """),
        md("""
        ## Mode 0 with a mask: the mask **and** the band `-pre_tokens ≤ j - i ≤ next_tokens`

        With a mask, mode 0 also uses pre/next, anchored at the **top-left** (no shift). The kernel applies them only
        at block granularity and trusts the user mask element-wise, so the user should pass a mask consistent with
        the band; the reference applies the intersection, which is the same thing whenever they agree
        (spec section 6.3, *Mode 0 detail*). Whether newer kernels apply pre/next element-wise is an **open
        question** (spec section 23, item 6).

        Here the mask hides key 2 from every row, and the band is `-2 ≤ j - i ≤ 3`. The mask is 4-D,
        `(B, 1, S_q, S_kv)`: a 2-D mask is accepted only in some layouts and chips, so prefer 3-D/4-D masks
        (spec section 6.2, section 22 row 15).
        """),
        code("""
        user_mask = torch.zeros(1, 1, S_Q, S_KV, dtype=torch.bool)  # (B, 1, S_q, S_kv): the mask has no head axis
        user_mask[..., 2] = True                                     # True = masked out: key 2 hidden from every row
        mode0 = dict(atten_mask=user_mask, pre_tokens=2, next_tokens=3)
        visibility_map(explain(**mode0))
        band = (j - i >= -2) & (j - i <= 3)
        print("mode 0 == SDPA with (not mask) & band:", check(mode0, ~user_mask & band))
        """),
        md("""
        ## Mode 1: the mask alone

        `allMask`: the full mask is required and pre/next are ignored.
        """),
        code("""
        visibility_map(explain(atten_mask=user_mask, sparse_mode=1, pre_tokens=0, next_tokens=0))
        print("mode 1 == SDPA with (not mask):", check(dict(atten_mask=user_mask, sparse_mode=1), ~user_mask))
        """),
        md("""
        ## The compressed 2048×2048 template (modes 2, 3, 4)

        Modes 2-4 take a fixed 2048×2048 mask instead of a full one; the kernel slides it along a diagonal, so one
        tensor serves every sequence length. It must be **`torch.triu(torch.ones(2048, 2048), diagonal=1)`**:
        1 strictly above the diagonal, 0 on and below (spec section 6.4). The docs call it "lower-triangular with a
        zero diagonal", meaning the *kept* part; a lower-triangular tensor of ones is the classic mistake. The kit
        never reads the template's values for the computation; it checks them and builds the band analytically.
        """),
        code("""
        print("template:", tuple(template.shape), template.dtype)
        print("equals triu(ones, 1):", torch.equal(template, torch.ones(2048, 2048, dtype=torch.bool).triu(1)))
        print("top-left corner:")
        print(template[:4, :4].int())
        wrong = torch.ones(2048, 2048, dtype=torch.bool).tril()
        try:
            explain(atten_mask=wrong, sparse_mode=2)
        except fia_kit.FIAArgumentError as error:
            print(type(error).__name__, "->", error)
        """),
        md("""
        ## Mode 2: left-up causal, `j ≤ i`

        The diagonal is anchored at the **top-left**: query 0 sees key 0, whatever the lengths.
        """),
        code("""
        visibility_map(explain(atten_mask=template, sparse_mode=2))
        print("mode 2 == SDPA with j <= i:", check(dict(atten_mask=template, sparse_mode=2), j <= i))
        """),
        md("""
        ## Mode 3: right-down causal, `j ≤ i + δ` with `δ = P + L_kv − L_q`

        The diagonal is anchored at the **bottom-right** of each batch's valid rectangle: the last valid query sees
        the last valid key. This is the causal mask of decoding with a cache: the `L_q` new tokens are the last
        `L_q` of the `P + L_kv` keys. Here `δ = 0 + 10 − 6 = 4`. The prefix `P` counts (spec section 6.3: every
        position rule uses the concatenated prefix+kv axis).
        """),
        code("""
        problem = explain(atten_mask=template, sparse_mode=3)
        print("delta = P + L_kv - L_q =", problem.prefix_len + problem.batches[0].kv_len - problem.batches[0].q_len)
        visibility_map(problem)
        print("mode 3 == SDPA with j <= i + 4:", check(dict(atten_mask=template, sparse_mode=3), j <= i + 4))
        """),
        md("""
        ## Mode 4: a band around the right-down diagonal

        `i + δ − pre_tokens ≤ j ≤ i + δ + next_tokens`: a sliding window (vLLM-Ascend uses `pre_tokens=window,
        next_tokens=0`). Note the **different origin** from mode 0's band (top-left there, right-down here).
        """),
        code("""
        mode4 = dict(atten_mask=template, sparse_mode=4, pre_tokens=2, next_tokens=0)
        visibility_map(explain(**mode4))
        print("mode 4 == SDPA with i+4-2 <= j <= i+4:", check(mode4, (j >= i + 4 - 2) & (j <= i + 4)))
        """),
        md("""
        The same band with mode 0 (and an all-zero mask, so only the band counts) sits at the top-left instead:
        """),
        code("""
        no_mask = torch.zeros(1, 1, S_Q, S_KV, dtype=torch.bool)
        visibility_map(explain(atten_mask=no_mask, sparse_mode=0, pre_tokens=2, next_tokens=0))
        print("mode 0 band == SDPA with i-2 <= j <= i:",
              check(dict(atten_mask=no_mask, pre_tokens=2, next_tokens=0), (j >= i - 2) & (j <= i)))
        """),
        md("""
        The figures module draws the same maps with the band edges, the right-down diagonal and what the op writes
        for each row:
        """),
        code("""
        for options in (dict(atten_mask=template, sparse_mode=3), mode4):
            problem = explain(**options)
            figures.visibility_figure(problem, fia_kit.reference.run_call(parse_call("v1", q, k, v, {**base, **options})),
                                      0).show()
        """, "figure"),
        *explorer_cells(),
        md("""
        ## Rows that see no key

        Two different things can leave a row with no visible key (spec section 7):

        1. **The row is outside the band** (e.g. mode 3 with more queries than keys: the first `L_q − L_kv − P`
           rows; a band with negative `next_tokens`). The op does not compute it: **output 0**, always.
        2. **The row is inside the band but the user mask hides every key** (modes 0/1). The kernel's −1e12 fill
           makes the softmax **uniform over all the batch's keys**: the output is the plain mean of V
           (`inner_precise` 0 or 1). With `inner_precise` 2 or 3 (bit 1, "row invalid correction") the kernel
           detects such rows and writes **0**.

        `fia_kit.reference.run_call` returns a per-row status next to the outputs.
        """),
        code("""
        q_long = torch.randn(1, N, 12, D, generator=g, dtype=torch.float16)  # L_q = 12 > L_kv = 10
        call = parse_call("v1", q_long, k, v, {**base, "atten_mask": template, "sparse_mode": 3})
        out = fia_kit.run(call, BACKEND).attention_out.cpu()
        status = fia_kit.reference.run_call(call).row_status[0]
        print("delta =", 10 - 12, "-> rows 0 and 1 see no key")
        print("row status:", [fia_kit.reference.RowStatus(int(s)).name for s in status[:4]], "...")
        print("rows 0-1 are zero:", bool((out[:, :, :2] == 0).all()), " rows 2-11 nonzero:",
              bool((out[:, :, 2:].abs().amax(-1) > 0).all()))
        """),
        code("""
        hide_row_0 = torch.zeros(1, 1, S_Q, S_KV, dtype=torch.bool)
        hide_row_0[..., 0, :] = True                             # row 0: every key masked
        for inner_precise in (0, 2):
            out = fia_kit.run(parse_call("v1", q, k, v, {**base, "atten_mask": hide_row_0, "sparse_mode": 1,
                                                 "inner_precise": inner_precise}), BACKEND).attention_out.cpu()
            mean_of_v = v.float().mean(dim=2)                     # (B, N, D): uniform weights over all 10 keys
            print(f"inner_precise={inner_precise}: row 0 is the mean of V: "
                  f"{torch.allclose(out[:, :, 0].float(), mean_of_v, atol=atol, rtol=rtol)}, "
                  f"row 0 is zero: {bool((out[:, :, 0] == 0).all())}")
        """),
        md("""
        The LSE of such rows is not settled by the sources (spec section 7, item 3: the docs say +inf, the code
        writes 3e99 or −3.4e38, and the mask-only case gives `−1e12 + ln(count)` by the math, **[inferred]**), so
        tests should not compare it.

        ## Invalid combinations

        Modes 1-4 need `atten_mask`; mode 0 and 4 bands must not be empty (spec section 6.3, *Validity checks*):
        """),
        code("""
        for options in (dict(sparse_mode=3),
                        dict(atten_mask=template, sparse_mode=4, pre_tokens=-3, next_tokens=1),
                        dict(sparse_mode=5)):
            try:
                explain(**options)
            except fia_kit.FIAArgumentError as error:
                print(type(error).__name__, "->", error)
        """),
        md("""
        ## Summary

        | mode | visible when | origin | mask |
        |---|---|---|---|
        | 0, no mask | always | – | none; pre/next ignored |
        | 0, mask | not masked and `-pre ≤ j-i ≤ next` | top-left | full |
        | 1 | not masked | – | full |
        | 2 | `j ≤ i` | top-left | 2048 template |
        | 3 | `j ≤ i + δ` | bottom-right, `δ = P + L_kv − L_q` | 2048 template |
        | 4 | `i + δ − pre ≤ j ≤ i + δ + next` | bottom-right | 2048 template |

        With S_q = 1 (decode) sparse_mode, pre and next are ignored: notebook 05.
        Next: [04 · sequence lengths](04_sequence_lengths.ipynb).
        """),
    ]


# ------------------------------------------------------------------------------------------------ 04 lengths

def lengths() -> list[nbformat.NotebookNode]:
    return [
        md("""
        # 4 · Sequence lengths

        Batches rarely fill their tensors. `actual_seq_lengths` (v2: `actual_seq_qlen`) and `actual_seq_lengths_kv`
        (v2: `actual_seq_kvlen`) say how many query rows and keys of each batch are valid: **per batch** for padded
        layouts, **cumulative** for packed ones (except paged K/V lengths).

        Spec (`../shared/spec/fia_spec.md`): section 5.1 *Non-packed layouts*, section 5.2 *Packed layouts*,
        section 5.3 *TorchAir*, section 5.4 *What happens outside the valid lengths*.
        """),
        setup(kit="from fia_kit import builders"),
        code("""
        g = torch.Generator().manual_seed(0)
        B, N, S_Q, S_KV, D = 3, 2, 8, 12, 64
        q = torch.randn(B, N, S_Q, D, generator=g, dtype=torch.float16)
        k = torch.randn(B, N, S_KV, D, generator=g, dtype=torch.float16)
        v = torch.randn(B, N, S_KV, D, generator=g, dtype=torch.float16)
        base = dict(num_heads=N, input_layout="BNSD", scale=D ** -0.5)
        atol, rtol = TOLERANCES[torch.float16]

        def attention(q=q, k=k, v=v, **options):
            return fia_kit.run(parse_call("v1", q, k, v, {**base, **options}), BACKEND).attention_out.cpu()

        def sdpa(b, q_len, kv_len):
            \"\"\"Independent reference: batch b's first q_len rows over its first kv_len keys.\"\"\"
            return torch.nn.functional.scaled_dot_product_attention(
                q[b, :, :q_len].float(), k[b, :, :kv_len].float(), v[b, :, :kv_len].float(), scale=D ** -0.5)
        """),
        md("""
        ## Per-batch lengths (BSH, BSND, BNSD, ...)

        One value per batch; valid data is the **first** `L` entries of the S axis (right padding). `None` means
        the whole axis. Rows `i ≥ L_q[b]` are written as **0**, and a batch with `L_kv[b] = 0` is all zeros
        (spec section 5.4).
        """),
        code("""
        q_lens, kv_lens = [8, 5, 3], [12, 7, 0]
        out = attention(actual_seq_lengths=q_lens, actual_seq_lengths_kv=kv_lens)
        for b in range(B):
            valid = out[b, :, :q_lens[b]].float()
            matches = torch.allclose(valid, sdpa(b, q_lens[b], kv_lens[b]), atol=atol, rtol=rtol) if kv_lens[b] else None
            print(f"batch {b}: L_q={q_lens[b]}, L_kv={kv_lens[b]:2d}, valid rows == SDPA: {matches}, "
                  f"rows >= L_q zero: {bool((out[b, :, q_lens[b]:] == 0).all())}, "
                  f"all zero: {bool((out[b] == 0).all())}")
        """),
        md("""
        The reference also reports what it did with each row (`RowStatus`: PADDING for rows beyond `L_q`,
        OUT_OF_BAND for a batch without keys):
        """),
        code("""
        status = fia_kit.reference.run_call(parse_call("v1", q, k, v, {**base, "actual_seq_lengths": q_lens,
                                                                         "actual_seq_lengths_kv": kv_lens})).row_status
        for b in range(B):
            print(f"batch {b}:", " ".join(fia_kit.reference.RowStatus(int(s)).name[:3] for s in status[b]))
        """),
        md("""
        ## Broadcast: one value for every batch

        A list of length 1 is broadcast; a list of at least B values uses the first B; anything else is an error
        (spec section 5.1). Values must lie in `[0, S]`.
        """),
        code("""
        print("[6] == [6, 6, 6]:", torch.equal(attention(actual_seq_lengths=[6]), attention(actual_seq_lengths=[6, 6, 6])))
        longer, _ = fia_kit.npu_fused_infer_attention_score(q, k, v, **base, actual_seq_lengths=[6, 6, 6, 99])
        print("[6, 6, 6, 99] uses the first 3 values:",
              torch.allclose(longer.float(), attention(actual_seq_lengths=[6]).float(), atol=atol, rtol=rtol))
        for bad in ([6, 6], [6, 6, 9]):
            try:
                fia_kit.reference.explain("v1", q, k, v, **base, actual_seq_lengths=bad)
            except fia_kit.FIAArgumentError as error:
                print(type(error).__name__, "->", error)
        """),
        md("""
        ## Lists or int64 tensors

        torch_npu's schema types the lengths `SymInt[]` (Python int lists; callers also pass 1-D CPU int tensors).
        TorchAir's `tng.ops` type them `Tensor?`: **int64 tensors on the device**, so that tiling in graph mode
        (which runs on the device) needs no host copy (spec section 5.3, section 1.4). Same values, same result; the
        kit's backends convert to whatever the target op wants. Float tensors are rejected.
        """),
        code("""
        as_list = attention(actual_seq_lengths=q_lens, actual_seq_lengths_kv=kv_lens)
        as_tensor = attention(actual_seq_lengths=torch.tensor(q_lens, dtype=torch.int64),
                              actual_seq_lengths_kv=torch.tensor(kv_lens, dtype=torch.int64))
        print("int list == int64 tensor:", torch.equal(as_list, as_tensor))
        try:
            fia_kit.reference.explain("v1", q, k, v, **base, actual_seq_lengths=torch.tensor([8.0, 5.0, 3.0]))
        except fia_kit.FIAArgumentError as error:
            print(type(error).__name__, "->", error)
        """),
        md("""
        With TorchAir the lengths are graph **inputs**, so one compiled graph serves every length; a Python list is
        a constant of the graph, and each new list recompiles. `fia_kit.backends.compiled.recompile_counts` shows it
        with `torch.compile` (no NPU needed):
        """),
        code("""
        from fia_kit.backends import compiled

        decode_call = parse_call("v1", q[:, :, :1], k, v, {**base, "actual_seq_lengths_kv": [12, 7, 3]})
        counts = compiled.recompile_counts(decode_call, [[12, 7, 3], [11, 7, 3], [10, 6, 2]])
        print("compiles for 3 different length lists:  list", counts["list"], " tensor", counts["tensor"])
        """),
        md("""
        ## Packed layouts: cumulative lengths

        In TND/NTD there is no batch axis; `actual_seq_lengths` is **required and cumulative**: element b is the
        total of batches 0..b, so batch b's tokens are rows `[cum[b-1], cum[b])` (spec section 5.2). Without paging
        `actual_seq_lengths_kv` is cumulative too. Rows of T beyond the last cumulative value: the spec says the
        output is unspecified, **[inferred]** probably zero (spec section 23, item 2).
        """),
        code("""
        q_lens, kv_lens = [3, 5, 2], [4, 12, 6]
        cum_q, cum_kv = builders.cumulative(q_lens), builders.cumulative(kv_lens)
        q_tnd, k_tnd, v_tnd = (builders.pack_sequences([x[b, :, :n] for b, n in enumerate(lens)], "TND")[0]
                               for x, lens in ((q, q_lens), (k, kv_lens), (v, kv_lens)))
        print("per-batch q", q_lens, "-> cumulative", cum_q, "; per-batch kv", kv_lens, "-> cumulative", cum_kv)
        print("TND query", tuple(q_tnd.shape), "key", tuple(k_tnd.shape))
        packed = fia_kit.run(parse_call("v1", q_tnd, k_tnd, v_tnd, dict(
            num_heads=N, input_layout="TND", scale=D ** -0.5,
            actual_seq_lengths=cum_q, actual_seq_lengths_kv=cum_kv)), BACKEND).attention_out.cpu()
        for b in range(B):
            rows = packed[cum_q[b] - q_lens[b]:cum_q[b]].transpose(0, 1).float()  # (N, L_q, D)
            print(f"batch {b}: rows [{cum_q[b] - q_lens[b]}, {cum_q[b]}) == SDPA:",
                  torch.allclose(rows, sdpa(b, q_lens[b], kv_lens[b]), atol=atol, rtol=rtol))
        """),
        md("""
        ### The "decreasing cumulative" mistake

        Passing per-batch lengths to a packed layout is the classic error. When they are not non-decreasing the kit
        says so and suggests their running sum. (When per-batch values happen to increase, e.g. `[2, 3, 5]`, no
        check can tell: the call is valid and means other lengths.)
        """),
        code("""
        try:
            fia_kit.reference.explain("v1", q_tnd, k_tnd, v_tnd, num_heads=N, input_layout="TND",
                                      actual_seq_lengths=q_lens, actual_seq_lengths_kv=cum_kv)
        except fia_kit.FIAArgumentError as error:  # its fields: which parameter, which rule, the value, a hint
            print("parameter:", error.parameter)
            print("rule:     ", error.rule)
            print("got:      ", error.got)
            print("hint:     ", error.hint)
        """),
        md("""
        ### Paged K/V in a packed layout: per-batch kv lengths

        With `block_table` the keys come from a paged cache, not from a packed T axis, so `actual_seq_lengths_kv`
        is **per batch, not cumulative**, even in TND (spec section 5.2; the torch_npu docs say "cumulative"
        generically, the V5 doc, the tiling code and vLLM-Ascend agree on per-batch: spec section 22, row 9).
        Query lengths stay cumulative. Below, `fia_kit.builders.to_paged` writes each batch's keys into blocks
        of 128 of a `(num_blocks, block_size, N·D)` cache (notebook 05 explains paging):
        """),
        code("""
        BLOCK = 128  # prefill paging wants 128..512, a multiple of 128
        cache_k, block_table = builders.to_paged([k[b, :, :n] for b, n in enumerate(kv_lens)], BLOCK, cache_rank=3,
                                                 generator=torch.Generator().manual_seed(1))
        cache_v, _ = builders.to_paged([v[b, :, :n] for b, n in enumerate(kv_lens)], BLOCK, cache_rank=3,
                                       generator=torch.Generator().manual_seed(1))  # same seed: same block table
        print("cache", tuple(cache_k.shape), "block_table", block_table.tolist())
        paged_options = dict(num_heads=N, input_layout="TND", scale=D ** -0.5, block_table=block_table,
                             block_size=BLOCK, actual_seq_lengths=cum_q, actual_seq_lengths_kv=kv_lens)
        paged = fia_kit.run(parse_call("v1", q_tnd, cache_k, cache_v, paged_options), BACKEND).attention_out.cpu()
        print("paged TND, kv lengths", kv_lens, "(per batch) == contiguous TND, kv lengths", cum_kv, "(cumulative):",
              torch.allclose(paged.float(), packed.float(), atol=atol, rtol=rtol))
        """),
        md("""
        ## Summary

        | layout | `actual_seq_lengths` (query) | `actual_seq_lengths_kv` |
        |---|---|---|
        | BSH / BSND / BNSD (+ two-part) | per batch, optional, 1 value broadcasts | per batch, optional; required when paged |
        | TND / NTD (+ two-part), not paged | cumulative, required | cumulative, required |
        | TND / NTD, paged | cumulative, required | **per batch**, required |

        Rows beyond `L_q` are 0; a batch with no keys is all 0; with S_q = 1 `actual_seq_lengths` is ignored
        (notebook 05). Next: [05 · paged KV and decode](05_paged_kv_and_decode.ipynb).
        """),
    ]


# ------------------------------------------------------------------------------------------------ 05 paged

def paged() -> list[nbformat.NotebookNode]:
    return [
        md("""
        # 5 · Paged KV caches and decode

        Serving engines keep K/V in a pool of fixed-size blocks; each sequence owns a list of block ids, its row of
        `block_table`. FIA reads the cache through that table. Decoding (one new token per sequence, S_q = 1) takes
        the op's "IncreFlashAttention" path, where a few rules change.

        Spec (`../shared/spec/fia_spec.md`): section 11 *Paged attention (block_table)*, section 6.5 *S_q == 1
        (decode / IFA path)*, section 5.1 *Non-packed layouts* (actual lengths ignored for S_q == 1).
        """),
        setup(kit="from fia_kit import builders, figures, masks, paged"),
        md("""
        ## A cache and a block table

        Token `t` of sequence `b` lives in block `block_table[b, t // block_size]`, at offset `t % block_size`.
        Blocks need not be contiguous or ordered; unused table entries are never read. `actual_seq_lengths_kv` is
        **required** with paging, and `block_table` is int32 `(B, max_blocks_per_seq)`.

        `fia_kit.builders.to_paged` writes per-sequence K (or V) into a cache, placing the blocks at shuffled
        physical ids as an allocator would, and returns the block table. The sizes suit the NPU: block_size 128
        (prefill paging wants 128..512 in multiples of 128, decode a multiple of 16), D = 128.
        """),
        code("""
        g = torch.Generator().manual_seed(0)
        B, N, N_KV, D, BLOCK = 3, 4, 2, 128, 128
        kv_lens = [300, 77, 512]
        S_KV = max(kv_lens)
        k = torch.randn(B, N_KV, S_KV, D, generator=g, dtype=torch.float16)   # contiguous K/V, BNSD
        v = torch.randn(B, N_KV, S_KV, D, generator=g, dtype=torch.float16)

        def paged_cache(x, rank):
            \"\"\"Sequences of x (B, N_kv, S, D) cut to kv_lens, in a rank-``rank`` cache (same block table each time).\"\"\"
            return builders.to_paged([x[b, :, :n] for b, n in enumerate(kv_lens)], BLOCK, cache_rank=rank,
                                     generator=torch.Generator().manual_seed(1))

        cache_k, block_table = paged_cache(k, 4)   # rank 4: (num_blocks, N_kv, block_size, D)
        cache_v, _ = paged_cache(v, 4)
        print("cache (rank 4, BnNBsD):", tuple(cache_k.shape), cache_k.dtype)
        print("block_table:", tuple(block_table.shape), block_table.dtype)
        print(block_table)

        b, t = 0, 200                              # token 200 of sequence 0
        block, offset = int(block_table[b, t // BLOCK]), t % BLOCK
        print(f"token {t} of sequence {b}: block_table[{b}, {t // BLOCK}] = {block}, offset {offset};",
              "cache holds it:", torch.equal(cache_k[block, :, offset], k[b, :, t]))
        print("paged.gather_sequence reads sequence 1 back:",
              torch.equal(paged.gather_sequence(cache_k, block_table[1], kv_lens[1], N_KV), k[1, :, :kv_lens[1]]))
        """),
        code("""
        problem = fia_kit.reference.explain("v1", torch.zeros(B, N, 1, D, dtype=torch.float16), cache_k, cache_v,
                                            num_heads=N, num_key_value_heads=N_KV, input_layout="BNSD",
                                            block_table=block_table, block_size=BLOCK, actual_seq_lengths_kv=kv_lens)
        figures.paged_figure(problem, 0).show()
        """, "figure"),
        md("""
        ## Three cache layouts, told apart by rank

        With paging the key/value `input_layout` is ignored; the cache layout follows from the tensor's rank
        (spec section 11):

        | rank | name | shape |
        |---|---|---|
        | 3 | BnBsH | `(num_blocks, block_size, N_kv·D)` |
        | 4 | BnNBsD | `(num_blocks, N_kv, block_size, D)` |
        | 5 | NZ | `(num_blocks, N_kv, D/16, block_size, 16)` for fp16/bf16 (`/32, 32` for int8) |

        All three hold the same tokens; the op gives the same answer with each, and the same as contiguous K/V
        with the same lengths. (BSH/BSND queries accept only BnBsH on A2/A3, and NZ with a float cache is a V5/950
        addition, so this cell runs the three ranks on the reference; the contiguous-vs-paged check below runs on
        `BACKEND`.)
        """),
        code("""
        q_prefill = torch.randn(B, N, 4, D, generator=g, dtype=torch.float16)
        caches = {rank: (paged_cache(k, rank)[0], paged_cache(v, rank)[0]) for rank in (3, 4, 5)}
        options = dict(num_heads=N, num_key_value_heads=N_KV, input_layout="BNSD", scale=D ** -0.5,
                       block_table=block_table, block_size=BLOCK, actual_seq_lengths_kv=kv_lens)
        contiguous_options = dict(num_heads=N, num_key_value_heads=N_KV, input_layout="BNSD", scale=D ** -0.5,
                                  actual_seq_lengths_kv=kv_lens)
        atol, rtol = TOLERANCES[torch.float16]
        contiguous = fia_kit.npu_fused_infer_attention_score(q_prefill, k, v, **contiguous_options)[0]
        for rank, (ck, cv) in caches.items():
            out = fia_kit.npu_fused_infer_attention_score(q_prefill, ck, cv, **options)[0]
            print(f"rank {rank} {paged.CACHE_LAYOUTS[rank]:6s} {str(tuple(ck.shape)):22s} == contiguous:",
                  torch.allclose(out.float(), contiguous.float(), atol=atol, rtol=rtol))
        """),
        md("## Paged == contiguous on the backend"),
        code("""
        paged_out = fia_kit.run(parse_call("v1", q_prefill, cache_k, cache_v, options), BACKEND).attention_out.cpu()
        contiguous_out = fia_kit.run(parse_call("v1", q_prefill, k, v, contiguous_options), BACKEND).attention_out.cpu()
        print("prefill, paged rank-4 cache == contiguous K/V:",
              torch.allclose(paged_out.float(), contiguous_out.float(), atol=atol, rtol=rtol))
        """),
        md("""
        Paging rules the kit checks before compute: `block_size` non-zero, `block_table` with B rows and enough
        columns for the longest sequence (`ceil(max L_kv / block_size)`), `actual_seq_lengths_kv` given:
        """),
        code("""
        for bad in (dict(actual_seq_lengths_kv=None), dict(block_table=block_table[:, :2]), dict(block_size=0)):
            try:
                fia_kit.reference.explain("v1", q_prefill, cache_k, cache_v, **{**options, **bad})
            except fia_kit.FIAArgumentError as error:
                print(type(error).__name__, "->", error)
        """),
        md("""
        ## Decode: S_q == 1

        With one query row per sequence (and no MLA rope input) the op runs its decode path, where
        **`sparse_mode`, `pre_tokens`, `next_tokens` and `actual_seq_lengths` are ignored** (spec sections 6.5 and
        5.1). The single query sees every key `0 .. P + L_kv − 1` that an explicit mask does not hide. A right-down
        causal mask would give the same answer, so the semantics agree.
        """),
        code("""
        q_decode = torch.randn(B, N, 1, D, generator=g, dtype=torch.float16)
        decode = lambda **extra: fia_kit.run(parse_call("v1", q_decode, cache_k, cache_v, {**options, **extra}),  # noqa: E731
                                     BACKEND).attention_out.cpu()
        plain = decode()
        expected = torch.cat([torch.nn.functional.scaled_dot_product_attention(
            q_decode[b:b + 1].float(), k[b:b + 1, :, :kv_lens[b]].float(), v[b:b + 1, :, :kv_lens[b]].float(),
            scale=D ** -0.5, enable_gqa=True) for b in range(B)])
        print("decode == SDPA over each sequence's L_kv keys:", torch.allclose(plain.float(), expected, atol=atol, rtol=rtol))
        template = masks.compressed_causal_mask()
        same = lambda out: torch.allclose(out.float(), plain.float(), atol=atol, rtol=rtol)  # noqa: E731
        capacity = block_table.shape[1] * BLOCK                        # key axis of a paged decode mask
        no_mask = torch.zeros(B, capacity, dtype=torch.bool)            # (B, S_kv'): nothing hidden
        print("sparse_mode 0 with a mask and pre_tokens=next_tokens=0 (prefill: the diagonal only) changes nothing:",
              same(decode(atten_mask=no_mask, pre_tokens=0, next_tokens=0)))
        print("sparse_mode 4 with pre_tokens=0, next_tokens=0 changes nothing:",
              same(decode(atten_mask=template, sparse_mode=4, pre_tokens=0, next_tokens=0)))
        print("sparse_mode 2 (left-up causal: would see only key 0) changes nothing:",
              same(decode(atten_mask=template, sparse_mode=2)))
        print("actual_seq_lengths=[0, 0, 0] changes nothing:", same(decode(actual_seq_lengths=[0, 0, 0])))
        """),
        md("""
        Only the explicit mask applies. With S_q == 1 it is `(B, S_kv')`, `(B, 1, S_kv')` or `(B, 1, 1, S_kv')`
        (batch 1 also accepted), and with paging its key axis must cover `block_table.shape[1] × block_size`
        (spec section 6.2). Here it hides the first 10 keys of every sequence.

        Use a per-batch `(B, S_kv')` mask when checking hardware: in vLLM-Ascend issue #15503 a `(1, 1, 1, CAP)`
        mask in bf16 paged decode was silently ignored beyond key 512. The spec keeps the documented semantics and
        lists the hardware behaviour as an **open question** (spec section 6.2, section 23 item 7).
        """),
        code("""
        decode_mask = torch.zeros(B, capacity, dtype=torch.bool)
        decode_mask[:, :10] = True
        masked = decode(atten_mask=decode_mask)
        expected = torch.cat([torch.nn.functional.scaled_dot_product_attention(
            q_decode[b:b + 1].float(), k[b:b + 1, :, 10:kv_lens[b]].float(), v[b:b + 1, :, 10:kv_lens[b]].float(),
            scale=D ** -0.5, enable_gqa=True) for b in range(B)])
        print("mask", tuple(decode_mask.shape), "hiding keys 0..9 == SDPA over keys 10..L_kv-1:",
              torch.allclose(masked.float(), expected, atol=atol, rtol=rtol))
        """),
        md("""
        ## Summary

        * `block_table[b, t // block_size]` and `t % block_size` locate token `t`; `actual_seq_lengths_kv` is
          required and per batch.
        * The cache rank picks the layout: 3 BnBsH, 4 BnNBsD, 5 NZ.
        * A paged call equals the contiguous call with the same lengths.
        * S_q == 1: sparse_mode, pre/next and `actual_seq_lengths` are ignored; only the mask and `L_kv` apply.
          (With MLA rope inputs, S_q == 1 keeps sparse modes 0/3/4: spec section 6.5.)
        """),
    ]


NOTEBOOKS = {
    "01_quickstart.ipynb": quickstart,
    "02_layouts.ipynb": layouts,
    "03_masks_and_sparse_modes.ipynb": masks,
    "04_sequence_lengths.ipynb": lengths,
    "05_paged_kv_and_decode.ipynb": paged,
}


if __name__ == "__main__":
    sys.exit(main(NOTEBOOKS, __doc__.splitlines()[0]))
