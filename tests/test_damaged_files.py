"""Damaged capture and profile files: each gives the kit's named error (file and problem), nothing else.

Captures (``fia_kit.capture``): truncation at many offsets, single-byte changes anywhere (header, JSON index,
tensor bytes), an index that is valid JSON but not the kit's, foreign safetensors files, a header declaring a
multi-terabyte tensor; each raises ``CaptureFileError`` without allocating more than the file's size (Python
allocations by tracemalloc, torch's by a dispatcher meter). Profiles (``fia_kit.read_ascend``): the shipped
illustration with a column dropped, a number replaced by text, a row cut mid-line, non-UTF-8 bytes, an empty file;
each raises ``ProfileFormatError`` naming the file and the column or row. Neither reader executes code from a file.
"""

from __future__ import annotations

import json
import re
import shutil
import struct
import tracemalloc
from pathlib import Path

import pytest
import torch
from fuzz_calls import AllocationMeter
from safetensors.torch import save_file

from fia_kit.ascend_profile import ProfileFormatError, read_ascend
from fia_kit.capture import CaptureFileError, capture, load_capture, seal
from fia_kit.reference import npu_fused_infer_attention_score as op_v1

ROOT = Path(__file__).resolve().parents[1]
ILLUSTRATION = ROOT / "examples" / "ascend_profile" / "decode_baseline_ascend_pt"
SLACK = 1 << 20  # bytes of bookkeeping a failed load may allocate beyond the file's size


@pytest.fixture(scope="module")
def good_capture(tmp_path_factory: pytest.TempPathFactory) -> bytes:
    """A capture of two calls (a mask and lengths among the stored tensors)."""
    path = tmp_path_factory.mktemp("capture") / "good.fiacap"
    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(2, 2, s, 16, generator=g).half() for s in (5, 9, 9))
    with capture(path, tensors="all"):
        op_v1(q, k, v, num_heads=2, input_layout="BNSD", actual_seq_lengths_kv=[9, 4], scale=0.25)
        op_v1(q, k, v, num_heads=2, input_layout="BNSD", atten_mask=torch.zeros(2, 1, 5, 9, dtype=torch.bool))
    data = path.read_bytes()
    assert len(load_capture(path)) == 2
    return data


def _header_end(data: bytes) -> int:
    return 8 + int.from_bytes(data[:8], "little")


def _refused(path: Path, data: bytes) -> CaptureFileError:
    """Write ``data`` to ``path`` and load it: CaptureFileError naming the file, within the file's size."""
    path.write_bytes(data)
    meter = AllocationMeter()
    tracemalloc.start()
    try:
        with meter, pytest.raises(CaptureFileError) as info:
            load_capture(path)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert str(path) in str(info.value) and info.value.problem
    assert peak <= len(data) + SLACK, f"a failed load allocated {peak} bytes (Python) for a {len(data)}-byte file"
    assert meter.largest <= len(data), f"a failed load allocated a {meter.largest}-byte tensor ({meter.op})"
    return info.value


def test_truncation_at_every_offset_is_refused(good_capture: bytes, tmp_path: Path) -> None:
    path = tmp_path / "cut.fiacap"
    end = _header_end(good_capture)
    offsets = sorted({*range(0, end + 16), *range(end, len(good_capture), 7)})
    problems = {_refused(path, good_capture[:cut]).problem.split(" (")[0] for cut in offsets}
    assert problems <= {"not a readable safetensors file", "corrupt or not sealed: the header holds no single "
                        "'fia_kit.capture.sha256' digest"}, problems


@pytest.mark.parametrize("region", ["header and index", "tensor bytes"])
def test_a_changed_byte_anywhere_is_detected(good_capture: bytes, tmp_path: Path, region: str) -> None:
    """Every byte of the header (the JSON index inside it included) and every 3rd tensor byte, changed two ways."""
    path = tmp_path / "flipped.fiacap"
    end = _header_end(good_capture)
    positions = range(0, end) if region == "header and index" else range(end, len(good_capture), 3)
    for at in positions:
        for mask in (0x01, 0x20):
            damaged = bytearray(good_capture)
            damaged[at] ^= mask
            _refused(path, bytes(damaged))


def test_a_changed_scalar_in_the_index_is_detected(good_capture: bytes, tmp_path: Path) -> None:
    """The case the tensors' content addresses cannot see: scale 0.25 -> 0.75 inside the JSON index."""
    text = good_capture.replace(b'\\"value\\":0.25', b'\\"value\\":0.75', 1)
    assert text != good_capture
    assert "digest does not match" in _refused(tmp_path / "scale.fiacap", text).problem


def _resealed(good: bytes, path: Path, edit) -> bytes:
    """The file with its index replaced by ``edit(index)`` and sealed again (a well-formed file, a foreign index)."""
    from safetensors import safe_open

    path.write_bytes(good)
    with safe_open(str(path), "pt") as handle:
        metadata, tensors = handle.metadata(), {k: handle.get_tensor(k) for k in handle.keys()}
    metadata["fia_kit.capture"] = edit(json.loads(metadata["fia_kit.capture"]))
    save_file(tensors, str(path), metadata=metadata)
    seal(path)
    return path.read_bytes()


FOREIGN_INDEXES = {
    "a list": lambda i: "[]",
    "a number": lambda i: "3",
    "no calls": lambda i: json.dumps({k: v for k, v in i.items() if k != "calls"}),
    "calls an object": lambda i: json.dumps({**i, "calls": {}}),
    "a call a string": lambda i: json.dumps({**i, "calls": ["query"]}),
    "entry a number": lambda i: json.dumps({**i, "calls": [{**i["calls"][0], "entry": 1}]}),
    "arguments a list": lambda i: json.dumps({**i, "calls": [{**i["calls"][0], "arguments": []}]}),
    "an argument null": lambda i: json.dumps({**i, "calls": [{**i["calls"][0], "arguments": {
        **i["calls"][0]["arguments"], "scale": None}}]}),
    "negative shape": lambda i: json.dumps({**i, "calls": [{**i["calls"][0], "arguments": {
        **i["calls"][0]["arguments"], "query": {**i["calls"][0]["arguments"]["query"], "shape": [-1, 2, 5, 16]}}}]}),
    "dtype unknown": lambda i: json.dumps({**i, "calls": [{**i["calls"][0], "arguments": {
        **i["calls"][0]["arguments"], "query": {**i["calls"][0]["arguments"]["query"], "dtype": "float128"}}}]}),
    "ints of strings": lambda i: json.dumps({**i, "calls": [{**i["calls"][0], "arguments": {
        **i["calls"][0]["arguments"], "actual_seq_lengths_kv": {"kind": "ints", "value": ["9", "4"]}}}]}),
    "count a string": lambda i: json.dumps({**i, "calls": [{**i["calls"][0], "count": "2"}]}),
    "another format": lambda i: json.dumps({**i, "format": "something-else"}),
}


@pytest.mark.parametrize("name", list(FOREIGN_INDEXES))
def test_an_index_that_is_json_but_not_the_kits_is_refused(good_capture: bytes, tmp_path: Path, name: str) -> None:
    path = tmp_path / "foreign-index.fiacap"
    data = _resealed(good_capture, path, FOREIGN_INDEXES[name])
    problem = _refused(path, data).problem
    assert "malformed index" in problem or "not a fia-kit capture" in problem or "the index says" in problem, problem


def test_foreign_safetensors_files_are_refused(tmp_path: Path) -> None:
    path = tmp_path / "model.safetensors"
    save_file({"weight": torch.zeros(4, 4)}, str(path))
    assert "not a fia-kit capture" in _refused(path, path.read_bytes()).problem
    save_file({"weight": torch.zeros(4)}, str(path), metadata={"format": "pt"})
    assert "not a fia-kit capture" in _refused(path, path.read_bytes()).problem
    save_file({"weight": torch.zeros(4)}, str(path), metadata={"format": "fia-kit-capture",
                                                               "fia_kit.capture": json.dumps({"calls": []})})
    assert "digest" in _refused(path, path.read_bytes()).problem  # the kit's marker, never sealed


def _safetensors(header: dict, data: bytes = b"") -> bytes:
    raw = json.dumps(header, separators=(",", ":")).encode()
    raw += b" " * (-len(raw) % 8)
    return struct.pack("<Q", len(raw)) + raw + data


@pytest.mark.parametrize("header, problem", [
    ({"huge": {"dtype": "F32", "shape": [1 << 20, 1 << 20, 1 << 10], "data_offsets": [0, 16]}}, "declares"),
    ({"huge": {"dtype": "F32", "shape": [4], "data_offsets": [0, 1 << 42]}}, "declares"),
    ({"odd": {"dtype": "F128", "shape": [4], "data_offsets": [0, 16]}}, "no known dtype"),
    ({"odd": {"dtype": "F32", "shape": "4", "data_offsets": [0, 16]}}, "malformed shape"),
    ({"odd": {"dtype": "F32", "shape": [4], "data_offsets": [16, 0]}}, "declares"),
])
def test_headers_that_declare_more_than_the_file_holds(tmp_path: Path, header: dict, problem: str) -> None:
    error = _refused(tmp_path / "huge.fiacap", _safetensors(header, bytes(16)))
    assert problem in error.problem


def test_a_header_length_beyond_the_file(tmp_path: Path) -> None:
    data = struct.pack("<Q", 1 << 50) + b"{}"
    assert "header declares" in _refused(tmp_path / "length.fiacap", data).problem
    assert "truncated" in _refused(tmp_path / "short.fiacap", b"\x00" * 5).problem
    assert "UTF-8 JSON" in _refused(tmp_path / "bytes.fiacap", struct.pack("<Q", 4) + b"\xff\xfe{}").problem


# ------------------------------------------------------------------------------------------------ profiles
def _copy_illustration(tmp_path: Path) -> Path:
    folder = tmp_path / "run_ascend_pt"
    shutil.copytree(ILLUSTRATION, folder)
    return folder


CSV = Path("ASCEND_PROFILER_OUTPUT") / "kernel_details.csv"
MSPROF = next(ILLUSTRATION.glob("PROF_*/mindstudio_profiler_output/op_summary_*.csv")).relative_to(ILLUSTRATION)
READ_COLUMNS = ["Name", "Type", "Start Time(us)", "Duration(us)", "Wait Time(us)", "Block Num"]
NUMERIC = ["Start Time(us)", "Duration(us)", "Wait Time(us)", "Block Num"]


def _rewrite_csv(path: Path, edit) -> None:
    lines = path.read_text(encoding="utf-8").splitlines(keepends=True)
    path.write_text("".join(edit(lines)), encoding="utf-8")


def _split(line: str) -> list[str]:
    import csv

    return next(csv.reader([line]))


def _join(cells: list[str]) -> str:
    import csv
    import io

    out = io.StringIO()
    csv.writer(out, lineterminator="\n").writerow(cells)
    return out.getvalue()


def _profile_error(folder: Path) -> ProfileFormatError:
    with pytest.raises(ProfileFormatError) as info:
        read_ascend(folder)
    return info.value


@pytest.mark.parametrize("column", READ_COLUMNS)
def test_a_missing_column_is_named(tmp_path: Path, column: str) -> None:
    folder = _copy_illustration(tmp_path)

    def drop(lines: list[str]) -> list[str]:
        at = _split(lines[0]).index(column)
        return [_join([c for i, c in enumerate(_split(line)) if i != at]) for line in lines]

    _rewrite_csv(folder / CSV, drop)
    error = _profile_error(folder)
    assert "kernel_details.csv" in str(error) and f"missing column {column!r}" in error.problem


@pytest.mark.parametrize("column", NUMERIC)
@pytest.mark.parametrize("text", ["fast", "1e999999", "nan", "-inf", "3.5.1", "0x10"])
def test_a_wrong_type_is_named_with_its_row_and_column(tmp_path: Path, column: str, text: str) -> None:
    folder = _copy_illustration(tmp_path)

    def spoil(lines: list[str]) -> list[str]:
        at = _split(lines[0]).index(column)
        cells = _split(lines[1])
        cells[at] = text
        return [lines[0], _join(cells), *lines[2:]]

    _rewrite_csv(folder / CSV, spoil)
    error = _profile_error(folder)
    assert "kernel_details.csv" in str(error) and "row 2" in error.problem and repr(column) in error.problem


@pytest.mark.parametrize("relative", [CSV, MSPROF], ids=["kernel_details", "op_summary"])
def test_a_row_cut_off_mid_line_is_named(tmp_path: Path, relative: Path) -> None:
    folder = _copy_illustration(tmp_path)
    if relative == MSPROF:
        shutil.rmtree(folder / "ASCEND_PROFILER_OUTPUT")
    text = (folder / relative).read_text(encoding="utf-8")
    lines = text.splitlines(keepends=True)
    first_fia = next(i for i, line in enumerate(lines) if "FusedInferAttentionScore" in line)
    for keep in range(1, len(lines[first_fia]) - 1, 9):  # cut the first FIA row at many places
        (folder / relative).write_text("".join(lines[:first_fia]) + lines[first_fia][:keep], encoding="utf-8")
        with pytest.raises(ProfileFormatError) as info:
            read_ascend(folder)
        assert relative.name in str(info.value) and re.search(rf"row {first_fia + 1}\b", info.value.problem), \
            (keep, info.value.problem)


@pytest.mark.parametrize("name", ["kernel_details.csv", "op_statistic.csv", "trace_view.json"])
@pytest.mark.parametrize("damage", ["non-UTF-8", "empty", "truncated"])
def test_non_utf8_empty_and_truncated_files_are_named(tmp_path: Path, name: str, damage: str) -> None:
    folder = _copy_illustration(tmp_path)
    path = folder / "ASCEND_PROFILER_OUTPUT" / name
    data = path.read_bytes()
    damaged = {"non-UTF-8": data[:40] + b"\xff\xfe\x80" + data[40:], "empty": b"",
               "truncated": data[: len(data) // 3]}[damage]
    path.write_bytes(damaged)
    error = _profile_error(folder)
    assert name in str(error) and error.problem


def test_the_readers_execute_nothing_from_a_file() -> None:
    """No pickle, eval/exec, torch.load or yaml in the modules that read files: data formats only."""
    for module in ("capture.py", "ascend_profile.py", "profiling.py"):
        source = (ROOT / "fia_kit" / module).read_text(encoding="utf-8")
        found = re.findall(r"\b(pickle|marshal|eval\(|exec\(|torch\.load|yaml\.|allow_pickle|shelve)", source)
        assert not found, (module, found)
