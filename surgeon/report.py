"""Human-readable table of the coupled groups: what can be pruned, what is frozen and why."""
from __future__ import annotations

from rich.console import Console
from rich.table import Table
from torch import nn

from .core.plan import Plan

__all__ = ["print_analysis"]


def print_analysis(model: nn.Module, plan: Plan, *, console: Console | None = None) -> None:
    """One row per coupled group (units, frozen, removed, exact), then why groups are held back."""
    console = console or Console()
    table = Table(title=f"{type(model).__name__}: {len(plan.groups)} coupled groups (ratio {plan.ratio})")
    room = max(24, console.width - 56)  # long module paths lose their start, never the numbers
    for col in ("group", "first space", "spaces", "units", "frozen", "removed", "exact"):
        table.add_column(col, no_wrap=True, justify="left" if col == "first space" else "right")
    for g, r in zip(plan.groups, plan.removed):
        space = g.spaces[0] if g.spaces else ""
        space = space if len(space) <= room else "…" + space[1 - room:]
        table.add_row(str(g.id), space, str(len(g.spaces)), str(g.units),
                      str(g.frozen_units), str(r), "yes" if g.exact else "no")
    console.print(table)
    for g in plan.groups:
        for why in g.frozen_why[:2]:
            console.print(f"group {g.id}: {g.frozen_units} of {g.units} units frozen — {why}", soft_wrap=True)
        for why in g.inexact_why[:1]:
            console.print(f"group {g.id}: inexact — {why}", soft_wrap=True)
    prunable = sum(1 for g in plan.groups if g.prunable > 0)
    console.print(f"{prunable} of {len(plan.groups)} groups prunable; "
                  f"{sum(1 for g in plan.groups if not g.exact)} inexact (statistics over channels)")
