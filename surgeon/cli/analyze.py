"""`surgeon analyze SPEC [--graph FILE] [--plot FILE]`: the groups table, the dependency graph
picture, the widths plot."""
from __future__ import annotations

import argparse

from rich.console import Console

from ..api import analyze
from ..core.plan import Plan
from ..errors import InputError
from ..stages import Stages
from .args import config, goal, show_progress, with_ignore
from .data import calibration
from .dot import render, to_dot
from .flow import layer_flow
from .layers import collapse, cut_scope, plan_layers
from .plot import plot_widths
from .specs import Model, load_model
from .widths import layer_widths

__all__ = ["run_analyze", "COLLAPSE_ABOVE"]

COLLAPSE_ABOVE = 40
"""Layers a picture draws one by one; above this, repeated blocks are collapsed."""


def _graph(args: argparse.Namespace, model: Model, plan: Plan, console: Console) -> None:
    types = {n: type(m).__name__ for n, m in model.module.named_modules()}
    layers = plan_layers(plan, types)
    flow = layer_flow(model.module, model.inputs, layers)
    if args.scope:
        if not any(n == args.scope or n.startswith(args.scope + ".") for n in layers):
            example = next((n.rpartition(".")[0] for n in layers if "." in n), "layer1")
            raise InputError(f"--scope {args.scope} holds no layer of the graph; scopes look like '{example}'")
        flow = cut_scope(flow, args.scope, f"(before {args.scope})", f"(after {args.scope})")
    if len(flow) - 2 > COLLAPSE_ABOVE:
        flow, layers = collapse(flow, layers)
    where = f" · {args.scope}" if args.scope else ""
    title = f"{args.model}{where}: {len(plan.groups)} coupled groups at {goal(config(args))}"
    text = to_dot(flow, layers, list(plan.groups), title=title)
    for target in args.graph:
        path, note = render(text, target)
        console.print(f"graph: {path} ({len(flow)} nodes)" + (f"; {note}" if note else ""))


def run_analyze(args: argparse.Namespace, console: Console) -> int:
    """Run `surgeon analyze`."""
    cfg = config(args)
    show = show_progress(args)
    stages = Stages(show=show)
    with stages.stage("load"):
        model = load_model(args)
    cfg = with_ignore(cfg, model.module, args.ignore)
    stages.close()
    plan = analyze(model.module, model.inputs, ratio=cfg, calibration=calibration(args), show=not args.quiet,
                   progress=show)
    if args.graph:
        with stages.stage("graph"):
            _graph(args, model, plan, console)
    if args.plot is not None:
        with stages.stage("plot"):
            rows = layer_widths(model.module, plan.apply(model.module))
            title = f"{args.model}: output width per layer at {goal(cfg)} (light: before, dark: after)"
            console.print(f"plot: {plot_widths(rows, args.plot, title=title)}")
    stages.close()
    return 0
