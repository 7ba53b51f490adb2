"""What `surgeon slim` and `surgeon bench` report: the before → after table on the terminal, and
report.json / report.md next to the slim model."""
from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

from rich.console import Console
from rich.filesize import decimal
from rich.table import Table

if TYPE_CHECKING:
    from ..core.verify import Report

__all__ = ["cost_rows", "cost_table", "verification", "write_reports", "print_summary"]

_ROWS = (("params", "params", "count"), ("MACs", "macs", "count"), ("size", "size_bytes", "bytes"),
         ("PyTorch latency", "torch_ms", "ms"), ("ONNX Runtime latency", "onnx_ms", "ms"))


def _fmt(value: float, kind: str) -> str:
    if kind == "bytes":
        return decimal(int(value))
    if kind == "ms":
        return f"{value:.2f} ms"
    for unit, scale in (("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if abs(value) >= scale:
            return f"{value / scale:.2f} {unit}"
    return str(value)


def cost_rows(before: dict[str, Any], after: dict[str, Any]) -> list[tuple[str, str, str, str]]:
    """(what, before, after, keep) for every cost measured on both sides."""
    rows = []
    for label, key, kind in _ROWS:
        old, new = before.get(key), after.get(key)
        if old is not None and new is not None:
            rows.append((label, _fmt(old, kind), _fmt(new, kind), f"{new / old:.3f}" if old else "—"))
    return rows


def cost_table(before: dict[str, Any], after: dict[str, Any]) -> Table:
    """The before → after table as the terminal shows it."""
    table = Table()
    for column in ("", "before", "after", "keep"):
        table.add_column(column, justify="left" if not column else "right")
    for row in cost_rows(before, after):
        table.add_row(*row)
    return table


def verification(report: Report) -> dict[str, Any]:
    """The verification result as plain data."""
    return {"ok": report.ok, "max_rel_error": report.max_rel_error, "tolerance": report.tolerance,
            "checked_groups": list(report.checked),
            "unchecked_groups": [{"group": g, "why": why} for g, why in report.unchecked],
            "shapes_equal": report.shapes_equal, "constant_outputs": report.constant,
            "summary": repr(report)}


def _onnx_line(onnx: dict[str, Any]) -> str:
    if "skipped" in onnx:
        return f"ONNX: not written — {onnx['skipped']}"
    return (f"ONNX: {onnx['path']} ({decimal(onnx['size_bytes'])}, opset {onnx['opset']}), onnxruntime "
            f"matches PyTorch to {onnx['max_error']:.1e} at batch sizes {onnx['batch_sizes']}")


def _widths(widths: dict[str, int]) -> str:
    return " · ".join(f"{k} {v}" for k, v in widths.items())


def _how(options: dict[str, Any]) -> str:
    """'ratio 0.5', and how units were ranked when not by their L2 norm."""
    data = options.get("calibration")
    how = f", ranked by {options['importance']}" if options.get("importance", "l2") != "l2" else ""
    how += f" on {data['batches']} calibration batches" if data else ""
    how += ", removed channels' means compensated in the biases" if options.get("compensate") else ""
    return options["goal"] + how


def _markdown(report: dict[str, Any]) -> str:
    lines = [f"# {report['model']} slimmed at {_how(report['options'])}", "",
             f"`{report['command']}`", "", f"Inputs: {report['inputs']}. {report['groups']['pruned']} of "
             f"{report['groups']['total']} coupled groups pruned, {report['groups']['frozen']} frozen.", "",
             "| | before | after | keep |", "|---|---:|---:|---:|"]
    lines += [f"| {' | '.join(row)} |" for row in cost_rows(report["before"], report["after"])]
    lines += ["", f"Verification: {report['verification']['summary']}", "", _onnx_line(report["onnx"]), "",
              f"Load it with `{report['load']}`.", "",
              "## Widths per layer", "", "| layer | type | before | after |", "|---|---|---|---|"]
    lines += [f"| {layer['name']} | {layer['type']} | {_widths(layer['before'])} | {_widths(layer['after'])} |"
              for layer in report["layers"]]
    lines += ["", "## Seconds per stage", "", "| stage | s |", "|---|---:|"]
    lines += [f"| {stage} | {seconds:.2f} |" for stage, seconds in report["timings"].items()]
    return "\n".join(lines) + "\n"


def write_reports(directory: Path, report: dict[str, Any]) -> None:
    """report.json (every number) and report.md (the same, to read)."""
    (directory / "report.json").write_text(json.dumps(report, indent=1))
    (directory / "report.md").write_text(_markdown(report))


def print_summary(console: Console, report: dict[str, Any], files: list[str]) -> None:
    """What `surgeon slim` prints when it is done."""
    console.print(f"{report['model']} → {report['out']} at {_how(report['options'])}")
    console.print(cost_table(report["before"], report["after"]))
    console.print(f"verify: {report['verification']['summary']}")
    console.print(_onnx_line(report["onnx"]))
    console.print(f"wrote {report['out']}/: {', '.join(files)}; load it with {report['load']}")
