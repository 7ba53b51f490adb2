"""`surgeon slim SPEC --ratio R --out DIR`: slim, verify, save, export, measure, report."""
from __future__ import annotations

import argparse
import json
from importlib.metadata import version
from pathlib import Path
from typing import Any

from rich.console import Console

from ..api import slim
from ..core.rebuild import PLAN_ATTR, TIMINGS_ATTR
from ..core.verify import verify
from ..errors import InputError
from ..io import save
from ..stages import Stages
from .args import config, goal, show_progress, with_ignore
from .costs import costs, write_onnx
from .data import calibration
from .inputs import describe
from .report import print_summary, verification, write_reports
from .specs import Built, load_model
from .widths import layer_widths

__all__ = ["run_slim"]


def _load_hint(out: Path, built: Built) -> str:
    """How Python gets the slim model back."""
    if json.loads((out / "surgeon.json").read_text()).get("source"):
        return f"surgeon.load({str(out)!r})"
    original = {"module": f"{built.name.replace(':', '.')}()",
                "saved": f"surgeon.load({str(built.directory)!r})"}.get(built.kind, "<the original model>")
    return f"surgeon.load({str(out)!r}, model={original})"


def run_slim(args: argparse.Namespace, console: Console) -> int:
    """Run `surgeon slim`; 1 when verification fails (everything is still written)."""
    cfg = config(args)
    if args.out.exists() and not args.overwrite:
        raise InputError(f"--out {args.out} exists; pass --overwrite, or choose another directory")
    if args.repeats < 1:
        raise InputError(f"--repeats must be at least 1, got {args.repeats}")
    show = show_progress(args)
    stages = Stages(show=show)
    with stages.stage("load"):
        model = load_model(args)
    cfg = with_ignore(cfg, model.module, args.ignore)
    stages.close()  # one live display at a time: slim shows its own stages
    batches = calibration(args)
    small = slim(model.module, cfg, model.inputs, calibration=batches, progress=show)
    with stages.stage("verify"):
        checked = verify(model.module, small, model.inputs)
    with stages.stage("save"):
        save(small, args.out, overwrite=args.overwrite)
    with stages.stage("onnx"):
        onnx = {"skipped": "--no-onnx"}
        if not args.no_onnx:
            onnx = write_onnx(small, args.out / "model.onnx", model.inputs)
    with stages.stage("measure"):
        before = costs(model.module, model.inputs, repeats=args.repeats)
        after = costs(small, model.inputs, repeats=args.repeats)
    stages.close()
    plan = getattr(small, PLAN_ATTR)
    report: dict[str, Any] = {
        "surgeon": version("surgeon"), "command": args.command_line, "model": args.model,
        "class": type(model.module).__name__, "inputs": describe(model.inputs), "out": str(args.out),
        "load": _load_hint(args.out, model.built),
        "options": {"goal": goal(cfg), "ratio": cfg.ratio, "target_macs": cfg.target_macs,
                    "target_params": cfg.target_params, "max_ratio": cfg.max_ratio,
                    "round_to": cfg.round_to, "ignore": list(cfg.ignore), "prune_heads": cfg.prune_heads,
                    "importance": cfg.importance, "compensate": cfg.compensate,
                    "calibration": None if batches is None else {"file": str(args.calibration), "batches": len(batches)}},
        "before": before, "after": after,
        "keep": {k: after[k] / before[k] for k in ("params", "macs", "torch_ms") if before[k]},
        "verification": verification(checked), "onnx": onnx,
        "groups": {"total": len(plan.groups), "pruned": sum(1 for r in plan.removed if r),
                   "frozen": sum(1 for g in plan.groups if g.prunable <= 0),
                   "inexact": sum(1 for g in plan.groups if not g.exact)},
        "layers": layer_widths(model.module, small),
        "timings": {"load": stages.seconds.pop("load"), **getattr(small, TIMINGS_ATTR, {}), **stages.seconds},
    }
    write_reports(args.out, report)
    files = sorted(p.name for p in args.out.iterdir())
    print_summary(console, report, files)
    return 0 if checked.ok else 1
