"""``fia_kit.signatures.parameter_table()``: every parameter of the four schemas has a row, with a meaning and a docs
section that exists; names and defaults agree with spec 1.1, 1.2 and 1.6 as written there."""

from __future__ import annotations

import re
from pathlib import Path

from fia_kit import signatures

DOCS = Path(__file__).resolve().parents[1] / "docs"


def _table() -> dict[tuple[str | None, str | None], signatures.ParameterRow]:
    return {(r.v1, r.v2): r for r in signatures.parameter_table()}


def test_every_schema_argument_has_a_row_and_a_meaning() -> None:
    table = signatures.parameter_table()
    named = {r.v1 for r in table} | {r.v2 for r in table}
    for form, schema in signatures.SCHEMAS.items():
        arguments = re.findall(r"(?:Tensor\??|SymInt\[\]\?|int\??|float|str|bool) (\w+)", schema)
        missing = set(arguments) - named
        assert not missing, f"{form}: no parameter_table row for {sorted(missing)}"
    assert all(r.meaning and r.section for r in table)
    canonical = {signatures.canonical_name(a.name) for form in signatures.SCHEMAS
                 for a in signatures.schema_arguments(form)}
    assert set(signatures.PARAMETER_DOCS) == canonical, "PARAMETER_DOCS has stale or missing names"


def test_names_and_defaults_follow_the_spec() -> None:
    table = _table()
    # spec 1.6: v1 name, v2 name ('none' where the form lacks it)
    for pair in [("actual_seq_lengths", "actual_seq_qlen"), ("actual_seq_lengths_kv", "actual_seq_kvlen"),
                 ("quant_scale2", "quant_scale_out"), ("key_antiquant_scale", "dequant_scale_key"),
                 ("value_antiquant_mode", "value_quant_mode"), ("key_rope_antiquant_scale", "dequant_scale_key_rope"),
                 ("num_heads", "num_query_heads"), ("scale", "softmax_scale"),
                 ("softmax_lse_flag", "return_softmax_lse"), ("antiquant_scale", None), ("dequant_scale1", None),
                 ("key_shared_prefix", None), ("query_padding_size", None), (None, "learnable_sink"),
                 (None, "dequant_scale_query"), (None, "out_dtype"), ("block_table", "block_table")]:
        assert pair in table, pair
    # spec 1.1 / 1.2 scalars
    defaults = {"num_heads": "1", "scale": "1.0", "pre_tokens": "2147483647", "next_tokens": "2147483647",
                "input_layout": "'BSH'", "num_key_value_heads": "0", "sparse_mode": "0", "inner_precise": "0",
                "block_size": "0", "softmax_lse_flag": "False", "query": "required", "atten_mask": "None"}
    for row in table.values():
        if row.v1 in defaults:
            assert row.default == defaults[row.v1], row
    # spec 1.4: TorchAir retypes exactly the actual-length lists
    retyped = {r.v1 for r in table.values() if r.torchair}
    assert retyped == {"actual_seq_lengths", "actual_seq_lengths_kv", "actual_shared_prefix_len"}


def test_every_section_is_a_docs_heading() -> None:
    headings = set()
    for path in DOCS.glob("*.md"):
        headings |= set(re.findall(r"^#{2,3} (\d+(?:\.\d+)?)[. ]", path.read_text(encoding="utf-8"), re.MULTILINE))
    for row in signatures.parameter_table():
        for section in row.section.split(", "):
            assert section in headings, f"{row.v1 or row.v2}: spec {section} is not a heading in docs/"


def test_the_table_renders_as_text_and_html() -> None:
    table = signatures.parameter_table()
    text = repr(table).splitlines()
    assert len(text) == len(table) + 2  # caption, header, one line per parameter
    assert text[1].split() == ["v1", "v2", "TorchAir", "(tng.ops)", "default", "meaning", "spec"]
    assert re.match(r"actual_seq_lengths\s+actual_seq_qlen\s+int64 Tensor, not an int list\s+None\s+valid query",
                    next(line for line in text if line.startswith("actual_seq_lengths ")))
    html = table._repr_html_()
    assert html.count("<tr>") == len(table) + 1 and "<td>learnable_sink</td>" in html
