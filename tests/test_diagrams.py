"""The teaching figures (fia_kit.diagrams) draw the op's rules: each figure's data is checked against the rule written
out independently here (spec 10 head groups, spec 5.2 cumulative lengths, spec 16.3 scale shapes, spec 11 block
tables), never against the code that drew it."""

from __future__ import annotations

import math

import pytest
import torch

import fia_kit
from fia_kit import diagrams
from fia_kit.errors import FIAArgumentError


def _bars(fig, y=None, name=None):
    """[(start, end)] of every bar cell, optionally only those on category ``y`` or in trace ``name``."""
    cells = []
    for trace in fig.data:
        if trace.type != "bar" or (name is not None and trace.name != name):
            continue
        for base, width, cat in zip(trace.base, trace.x, trace.y, strict=True):
            if y is None or cat == y:
                cells.append((base, base + width))
    return cells


# ---------------------------------------------------------------------------------------------------- GQA

@pytest.mark.parametrize(("n_q", "n_kv"), [(8, 2), (64, 8), (32, 1), (16, 16), (128, 64), (80, 8)])
def test_gqa_figure_rows_are_contiguous_groups(n_q: int, n_kv: int) -> None:
    fig = diagrams.gqa_figure(n_q, n_kv, tiled_contrast=True)
    query_row, kv_row, tiled_row = (list(r) for r in fig.data[0].z)
    g = n_q // n_kv
    assert query_row == kv_row == torch.arange(n_kv).repeat_interleave(g).tolist()  # spec 10: K.repeat_interleave(G)
    assert tiled_row == torch.arange(n_kv).repeat(g).tolist()                         # the mistake it contrasts
    group_lines = sorted(s.x0 for s in fig.layout.shapes)
    assert group_lines == ([h * g - 0.5 for h in range(1, n_kv)] if g > 1 else [])


def test_gqa_figure_from_a_plan_names_the_head_the_op_reads() -> None:
    """For each query head n, the op's output equals attention over the KV head the figure names."""
    g = torch.Generator().manual_seed(0)
    q, k, v = torch.randn(1, 6, 3, 8, generator=g), torch.randn(1, 2, 5, 8, generator=g), torch.randn(1, 2, 5, 8,
                                                                                                        generator=g)
    the_plan = fia_kit.plan("v1", q, k, v, num_heads=6, num_key_value_heads=2, input_layout="BNSD", scale=0.3)
    kv_of = list(diagrams.gqa_figure(the_plan).data[0].z[1])
    assert kv_of == [0, 0, 0, 1, 1, 1]
    out = fia_kit.run(the_plan, "reference").attention_out
    for n, h in enumerate(kv_of):
        expected = torch.nn.functional.scaled_dot_product_attention(q[0, n], k[0, h], v[0, h], scale=0.3)
        torch.testing.assert_close(out[0, n], expected, atol=1e-5, rtol=1e-5)


def test_gqa_figure_refuses_heads_that_do_not_divide() -> None:
    with pytest.raises(FIAArgumentError, match="num_key_value_heads"):
        diagrams.gqa_figure(8, 3)


# ---------------------------------------------------------------------------------------------------- packing

def test_packing_figure_cuts_T_at_the_cumulative_lengths() -> None:
    q_lens, kv_lens = [3, 5, 0, 2], [4, 12, 1, 6]
    t_q, t_kv = 12, 26                                 # both longer than the sum: a tail on each side
    cum_q, cum_kv = torch.tensor(q_lens).cumsum(0).tolist(), torch.tensor(kv_lens).cumsum(0).tolist()
    x = torch.zeros(t_q, 2, 16)
    kv = torch.zeros(t_kv, 2, 16)
    the_plan = fia_kit.plan("v1", x, kv, kv, num_heads=2, input_layout="TND", actual_seq_lengths=cum_q,
                            actual_seq_lengths_kv=cum_kv)
    fig = diagrams.packing_figure(the_plan)
    for side, cum, total in (("query", cum_q, t_q), ("key/value", cum_kv, t_kv)):
        starts = [0, *cum[:-1]]
        for b in range(len(cum)):
            assert _bars(fig, side, next(t.name for t in fig.data if t.legendgroup == f"batch {b}")) == \
                [(starts[b], cum[b])]
        assert _bars(fig, side, "T past the last cumulative length") == [(cum[-1], total)]
    titles = [a.text for a in fig.layout.annotations]
    assert titles == [f"query: actual_seq_lengths = {cum_q} (cumulative), T = {t_q}",
                      f"key/value: actual_seq_lengths_kv = {cum_kv} (cumulative), T = {t_kv}"]
    assert list(fig.layout.xaxis.tickvals) == [0, 3, 8, 10, 12]


def test_packing_figure_ticks_are_boundaries_that_do_not_crowd() -> None:
    lens = [5, 17, 3, 40, 9, 1, 22, 8, 0, 13, 30, 2]
    cum = torch.tensor(lens).cumsum(0).tolist()
    x = torch.zeros(160, 2, 16)
    fig = diagrams.packing_figure(fia_kit.plan("v1", x, x, x, num_heads=2, input_layout="TND",
                                               actual_seq_lengths=cum, actual_seq_lengths_kv=cum))
    ticks = list(fig.layout.xaxis.tickvals)
    assert ticks[0] == 0 and ticks[-1] == 160 and set(ticks) <= {0, 160, *cum}
    assert min(b - a for a, b in zip(ticks[:-1], ticks[1:], strict=True)) >= 160 / 40
    assert len(ticks) >= 8  # most boundaries keep their label


def test_packing_figure_paged_shows_the_query_side_and_v2_names() -> None:
    cache = torch.zeros(4, 16, 2 * 16)
    table = torch.tensor([[0, 1], [2, 3]], dtype=torch.int32)
    q = torch.zeros(7, 2, 16)
    the_plan = fia_kit.plan("v2", q, cache, cache, num_query_heads=2, input_layout="TND", actual_seq_qlen=[3, 7],
                            actual_seq_kvlen=[20, 9], block_table=table, block_size=16)
    fig = diagrams.packing_figure(the_plan)
    assert {t.y[0] for t in fig.data} == {"query"}
    assert _bars(fig, "query") == [(0, 3), (3, 7)]
    assert "actual_seq_qlen = [3, 7]" in fig.layout.annotations[0].text and "per batch" in fig.layout.title.text


def test_packing_figure_needs_a_packed_layout() -> None:
    x = torch.zeros(1, 2, 3, 16)
    with pytest.raises(ValueError, match="packed"):
        diagrams.packing_figure(fia_kit.plan("v1", x, x, x, num_heads=2, input_layout="BNSD"))


# ---------------------------------------------------------------------------------------------------- antiquant

B, N_KV, S, D = 2, 3, 4, 8
# spec 16.3, last column: the scale element used by token t of batch b, head h, dim d, flattened in the op's shape.
RULES = {
    "tensor": lambda b, h, t, d: 0,                           # (1,)
    "channel": lambda b, h, t, d: h * D + d,                  # (1, N_kv, 1, D): [h, d]
    "token": lambda b, h, t, d: b * S + t,                    # (1, B, S): [b, t]
    "head": lambda b, h, t, d: h,                             # (N_kv,): [h]
    "token_head": lambda b, h, t, d: (b * N_KV + h) * S + t,  # (B, N_kv, S): [b, h, t]
}
SHAPES = {"tensor": (1,), "channel": (1, N_KV, 1, D), "token": (1, B, S), "head": (N_KV,), "token_head": (B, N_KV, S)}


@pytest.mark.parametrize("granularity", list(RULES))
def test_scale_indices_follow_the_spec_table(granularity: str) -> None:
    index, shape = diagrams.scale_indices(granularity, B, N_KV, S, D)
    expected = torch.tensor([[[[RULES[granularity](b, h, t, d) for d in range(D)] for t in range(S)]
                              for h in range(N_KV)] for b in range(B)])
    assert shape == SHAPES[granularity]
    assert torch.equal(index, expected)


def test_antiquant_scale_figure_panels_show_those_indices() -> None:
    fig = diagrams.antiquant_scale_figure(batch=B, kv_heads=N_KV, tokens=S, channels=D)
    assert len(fig.data) == len(RULES)
    for trace, (granularity, rule) in zip(fig.data, RULES.items(), strict=True):
        rows = [(b, h, t) for b in range(B) for h in range(N_KV) for t in range(S)]
        assert [list(r) for r in trace.z] == [[rule(*row, d) for d in range(D)] for row in rows], granularity
    titles = [a.text for a in fig.layout.annotations]
    assert titles[1].startswith("per channel: mode 0") and f"{(1, N_KV, 1, D)}" in titles[1]


# ---------------------------------------------------------------------------------------------------- block table

def _paged_plan(table: list[list[int]], kv_lens: list[int], num_blocks: int, block_size: int = 16):
    cache = torch.zeros(num_blocks, block_size, 2 * 16)
    q = torch.zeros(len(table), 1, 2 * 16)
    return fia_kit.plan("v1", q, cache, cache, num_heads=2, input_layout="BSH", block_size=block_size,
                        block_table=torch.tensor(table, dtype=torch.int32), actual_seq_lengths_kv=kv_lens)


def test_block_table_figure_reads_the_table_and_the_lengths() -> None:
    table, kv_lens, size, num_blocks = [[3, 1, 0], [2, 5, 4], [7, 0, 0]], [20, 40, 16], 16, 9
    fig = diagrams.block_table_figure(_paged_plan(table, kv_lens, num_blocks, size))
    cells = next(t for t in fig.data if t.type == "scatter" and t.y and t.y[0] != "cache").customdata
    expected = [[b, k, table[b][k], max(0, min(size, kv_lens[b] - k * size))]
                for b in range(3) for k in range(3)]                         # token t in block t // size
    assert [list(c) for c in cells] == expected
    read = {table[b][k]: b for b in range(3) for k in range(math.ceil(kv_lens[b] / size))}
    for b in range(3):
        assert sorted(round(s + 0.45) for s, _ in _bars(fig, "cache", f"batch {b}")) == \
            sorted(p for p, owner in read.items() if owner == b)
        used = math.ceil(kv_lens[b] / size)
        valid = _bars(fig, f"batch {b}", next(t.name for t in fig.data if t.legendgroup == f"batch {b}"))
        assert [round(e - s, 6) for s, e in valid] == \
            [round(0.9 * min(size, kv_lens[b] - k * size) / size, 6) for k in range(used)]
    free = sorted(round(s + 0.45) for s, _ in _bars(fig, "cache", "cache block no batch reads"))
    assert free == sorted(set(range(num_blocks)) - set(read))                 # blocks 6 and 8
    tails = [s for s, _ in _bars(fig, name="unused tail of a last block")]
    # a last block is partly used when size does not divide L_kv: batch 0 (20 = 16 + 4), batch 1 (40 = 32 + 8)
    assert tails == pytest.approx([n // size - 0.45 + 0.9 * (n % size) / size for n in kv_lens if n % size])


def test_paged_figure_shows_one_batch_and_greys_the_others() -> None:
    fig = fia_kit.paged_figure(_paged_plan([[3, 1, 0], [2, 5, 4]], [20, 40], 6), 0)
    assert {t.y[0] for t in fig.data if t.type == "bar" and t.y[0] != "cache"} == {"batch 0"}
    assert sorted(round(s + 0.45) for s, _ in _bars(fig, "cache", "cache block of another batch")) == [2, 4, 5]
    assert sorted(round(s + 0.45) for s, _ in _bars(fig, "cache", "batch 0")) == [1, 3]
    assert sorted(round(s + 0.45) for s, _ in _bars(fig, "cache", "cache block no batch reads")) == [0]


def test_block_table_figure_needs_paging() -> None:
    x = torch.zeros(1, 2, 3, 16)
    with pytest.raises(ValueError, match="paged"):
        diagrams.block_table_figure(fia_kit.plan("v1", x, x, x, num_heads=2, input_layout="BNSD"))


# ---------------------------------------------------------------------------------------------------- agreement

def test_agreement_decides_as_allclose_and_shows_two_digits() -> None:
    g = torch.Generator().manual_seed(3)
    expected = torch.randn(50, generator=g)
    pairs = {f"noise {scale:g}": (expected + scale * torch.randn(50, generator=g), expected)
             for scale in (1e-5, 3e-4, 1e-3, 1e-2)}
    table = diagrams.agreement(pairs, 1e-3, 1e-3)
    for (what, worst, ratio), (actual, exp) in zip(table.rows, pairs.values(), strict=True):
        assert worst == pytest.approx(float((actual.double() - exp.double()).abs().max()))
        assert (ratio <= 1) == torch.allclose(actual.double(), exp.double(), atol=1e-3, rtol=1e-3), what
    exact = diagrams.agreement({"a vs a": (torch.ones(3), torch.ones(3)), "off by 0.25": (torch.zeros(2),
                                                                                          torch.tensor([0, 0.25])),
                                "last-bit noise": (torch.ones(2), torch.ones(2) + 1e-7),
                                "far off": (torch.zeros(1), torch.tensor([93.5]))}, 0.1, 0.0)
    assert repr(exact).splitlines() == [
        "tolerance: |actual - expected| <= 0.1 + 0·|expected|",
        "compared        max |actual - expected|  x tolerance (<= 1 agrees)  agrees",
        "a vs a          < 1e-05                  < 0.1                      yes",
        "off by 0.25     0.2                      2.5                        no",
        "last-bit noise  < 1e-05                  < 0.1                      yes",
        "far off         94                       940                        no",
    ]
    assert "<td>2.5</td><td>no</td>" in exact._repr_html_()
    equal = diagrams.agreement({"same": (torch.ones(2), torch.ones(2)), "differs": (torch.ones(2), torch.zeros(2))},
                               0.0, 0.0)
    assert [row[1:] for row in equal.rows] == [(0.0, 0.0), (1.0, float("inf"))]  # exact comparison: no 0/0
    assert repr(equal).splitlines()[0] == "tolerance 0: agrees only where actual == expected"
