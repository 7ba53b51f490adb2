"""Human-readable table of the coupled groups: what can be pruned, what is frozen and why."""
from __future__ import annotations

from rich.console import Console
from rich.table import Table
from torch import nn

from .core.plan import Plan

__all__ = ["print_analysis"]

_NAMES = {"macs": "MACs", "params": "params"}


def print_analysis(model: nn.Module, plan: Plan, *, console: Console | None = None) -> None:
    """One row per coupled group (units, frozen, removed, the ratio it loses, exact), then why
    groups are held back; under a global budget, the figure reached."""
    console = console or Console()
    b = plan.budget
    how = f"ratio {plan.ratio}" if b is None else f"{_NAMES[b.metric]} keep {b.reached / max(b.total, 1):.3f}"
    table = Table(title=f"{type(model).__name__}: {len(plan.groups)} coupled groups ({how})")
    room = max(16, console.width - 64)  # long module paths lose their start, never the numbers
    for col in ("group", "first space", "spaces", "units", "frozen", "removed", "ratio", "exact"):
        table.add_column(col, no_wrap=True, justify="left" if col == "first space" else "right")
    ratios = plan.ratios or tuple(r / g.units if g.units else 0.0 for g, r in zip(plan.groups, plan.removed))
    for g, r, ratio in zip(plan.groups, plan.removed, ratios):
        space = g.spaces[0] if g.spaces else ""
        space = space if len(space) <= room else "…" + space[1 - room:]
        table.add_row(str(g.id), space, str(len(g.spaces)), str(g.units),
                      str(g.frozen_units), str(r), f"{ratio:.3f}", "yes" if g.exact else "no")
    console.print(table)
    for g in plan.groups:
        for why in g.frozen_why[:2]:
            console.print(f"group {g.id}: {g.frozen_units} of {g.units} units frozen — {why}", soft_wrap=True)
        for why in g.inexact_why[:1]:
            console.print(f"group {g.id}: inexact — {why}", soft_wrap=True)
    if plan.budget is not None:
        console.print(f"budget: {_budget(plan)}", soft_wrap=True)
    prunable = sum(1 for g in plan.groups if g.prunable > 0)
    console.print(f"{prunable} of {len(plan.groups)} groups prunable; "
                  f"{sum(1 for g in plan.groups if not g.exact)} inexact (statistics over channels)")


def _budget(plan: Plan) -> str:
    """'MACs 148.6 M -> 74.3 M (keep 0.500, asked 0.500)': the budget line of the table."""
    b = plan.budget
    return (f"{_NAMES[b.metric]} {b.total / 1e6:,.1f} M -> {b.reached / 1e6:,.1f} M (keep {b.reached / max(b.total, 1):.3f}, "
            f"asked {b.target / max(b.total, 1):.3f})")
