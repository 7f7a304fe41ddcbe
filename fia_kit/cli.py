"""Command line of fia-kit (``fia-kit COMMAND`` or ``python -m fia_kit.cli COMMAND``)."""

from __future__ import annotations

import argparse
import json

from fia_kit.environment import detect  # first: sets TORCH_DEVICE_BACKEND_AUTOLOAD before torch


def _doctor(args: argparse.Namespace) -> int:
    """Print the environment report and which backends are usable, and why not."""
    report = detect()
    print(json.dumps(report.to_dict(), indent=2) if args.json else report.table())
    return 0


def _check(args: argparse.Namespace) -> int:
    """Run the founding example on the chosen backends and print the comparison with the reference."""
    import torch

    from fia_kit.backends import compare, founding_example

    call = founding_example(args.form, getattr(torch, args.dtype))
    table = compare(call, args.backend or None)
    print(table.table())
    return 0 if table.passed else 1


def _lint(args: argparse.Namespace) -> int:
    """Print the findings of every distinct call of a capture file: a table (with each call's host route, the
    kernel's routes deciding which rules apply), then (``--messages``) each message."""
    import sys

    from fia_kit.capture import CaptureFileError, format_table, load_capture
    from fia_kit.lint import lint

    try:
        calls = load_capture(args.file)
    except CaptureFileError as err:
        print(f"fia-kit lint: {err}", file=sys.stderr)
        return 2
    rows, details, errors = [], [], 0
    for call in calls:
        findings = lint(call)
        errors += sum(f.severity == "error" for f in findings)
        rules = {s: ", ".join(f.rule for f in findings if f.severity == s) or "-" for s in ("error", "warning")}
        rows.append({"#": str(call.index), "count": str(call.count), "entry": call.entry, "form": call.form,
                     "query": "x".join(map(str, call.arguments["query"]["shape"])),
                     "errors": rules["error"], "warnings": rules["warning"],
                     "replay": "-" if not call.replayable else "exact" if call.exact else "regenerated",
                     "host route": findings.route or "-"})
        details += [f"  call {call.index}: {f}" for f in findings]
    print(f"{args.file}: {len(calls)} distinct calls of {calls.total_calls}")
    print(format_table(rows))
    if args.messages and details:
        print("\n".join(["", "findings:", *details]))
    return 1 if errors else 0


def _explain(args: argparse.Namespace) -> int:
    """Print the findings of an NPU error text (a file, or stdin for "-"): a table, then each finding in words.
    With ``--capture``, each finding is confirmed (or not) by validating a captured call."""
    import sys

    from fia_kit.capture import CaptureFileError, load_capture
    from fia_kit.rules.explain import explain, table

    try:
        if args.file == "-":
            text = sys.stdin.buffer.read()
        else:
            with open(args.file, "rb") as handle:
                text = handle.read()
    except OSError as err:
        print(f"fia-kit explain: cannot read {args.file}: {err.strerror or err}", file=sys.stderr)
        return 2
    call = None
    if args.capture:
        try:
            calls = load_capture(args.capture)
        except CaptureFileError as err:
            print(f"fia-kit explain: {err}", file=sys.stderr)
            return 2
        chosen = [c for c in calls if c.index == args.call] if args.call is not None else \
            [c for c in calls if c.error] or [c for c in calls if c.replayable]
        if not chosen:
            print(f"fia-kit explain: {args.capture} has no call {args.call if args.call is not None else 'to check'}",
                  file=sys.stderr)
            return 2
        call = chosen[0]
        print(f"checking against call {call.index} of {args.capture} ({call.entry})")
    findings = explain(text, call=call)
    print(table(findings))
    for number, finding in enumerate(findings, 1):
        print(f"\n{number}. {finding}")
    return 0 if findings else 1


def build_parser() -> argparse.ArgumentParser:
    """Build the argument parser; each subcommand sets ``handler`` (args -> exit code)."""
    parser = argparse.ArgumentParser(
        prog="fia-kit", description="Toolkit for Ascend's fused inference attention operator."
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    doctor = commands.add_parser("doctor", help="report the environment and which backends are usable")
    doctor.add_argument("--json", action="store_true", help="print the report as JSON")
    doctor.set_defaults(handler=_doctor)
    check = commands.add_parser("check", help="compare backends with the reference on the founding example")
    check.add_argument("--backend", action="append", choices=["reference", "compiled", "npu", "npu-graph", "flex"],
                       help="backend to compare (repeatable; default: npu and npu-graph if usable, else flex)")
    check.add_argument("--form", choices=["v1", "v2"], default="v1")
    check.add_argument("--dtype", choices=["float16", "bfloat16", "float32"], default="float16")
    check.set_defaults(handler=_check)
    lint = commands.add_parser("lint", help="lint every distinct call of a capture file (fia_kit.capture)")
    lint.add_argument("file", help="a capture file written by fia_kit.capture")
    lint.add_argument("--messages", action="store_true", help="also print every finding's message")
    lint.set_defaults(handler=_lint)
    explain = commands.add_parser("explain", help="explain an NPU error: a traceback, a CANN log excerpt or a line "
                                  "with an aclnn error code (fia_kit.explain)")
    explain.add_argument("file", help="a text file holding the error, or - to read it from stdin")
    explain.add_argument("--capture", help="a capture file (fia_kit.capture): confirm each finding by validating a "
                         "call of it (default: the first call that raised, else the first call)")
    explain.add_argument("--call", type=int, help="the index of the call in --capture to check")
    explain.set_defaults(handler=_explain)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run the fia-kit command line and return its exit code."""
    args = build_parser().parse_args(argv)
    return args.handler(args)


if __name__ == "__main__":
    raise SystemExit(main())
