"""`surgeon bench SPEC`: params, MACs and latency before → after (for a saved directory: the
model it was slimmed from against the saved one)."""
from __future__ import annotations

import argparse

from rich.console import Console

from ..api import slim
from ..errors import InputError
from ..stages import Stages
from .args import config, goal, show_progress, with_ignore
from .data import calibration
from .costs import costs
from .inputs import describe
from .report import cost_table
from .specs import load_model, original_of

__all__ = ["run_bench"]


def run_bench(args: argparse.Namespace, console: Console) -> int:
    """Run `surgeon bench`."""
    cfg = config(args)
    if args.repeats < 1 or args.threads < 1:
        raise InputError(f"--repeats and --threads must be at least 1, got {args.repeats} and {args.threads}")
    show = show_progress(args)
    stages = Stages(show=show)
    with stages.stage("load"):
        model = load_model(args)
        saved = model.built.kind == "saved"
        original = original_of(model.built) if saved else model.module
    stages.close()
    if saved:
        small, what = model.module, f"{args.model} (saved) against the model it was slimmed from"
    else:
        small = slim(original, with_ignore(cfg, original, args.ignore), model.inputs, calibration=calibration(args),
                     progress=show)
        what = f"{args.model} at {goal(cfg)}"
    with stages.stage("measure"):
        before = costs(original, model.inputs, repeats=args.repeats, threads=args.threads, onnx=args.onnx)
        after = costs(small, model.inputs, repeats=args.repeats, threads=args.threads, onnx=args.onnx)
    stages.close()
    console.print(what)
    console.print(cost_table(before, after))
    console.print(f"inputs {describe(model.inputs)}; latency: median of {args.repeats} runs on "
                  f"{args.threads} thread(s)")
    return 0
