"""Global budgets: how many units each group loses so that the model keeps `target_macs` or
`target_params`.

Units compete across groups on **mean-normalised scores**: each group's scores divided by the
mean score of its removable units (Torch-Pruning's default `normalizer="mean"`). Raw scores do
not compare across layers — an L2 norm grows with fan-in and weight scale, a Taylor score with
the loss scale at that depth — while the ratio to the group's own mean says how a unit stands
among its peers, whatever the units' scale. A threshold t removes from every group its units
scoring below t times the group's mean, at most `max_ratio` of the group (≥ 1 unit kept), with
`round_to` and equal-count constraints applied as for a uniform ratio (`plan.select_counts`).
The cost of a removal is estimated without rebuilding (`costs.CostModel`); bisection on t
finds the smallest removal that meets the target, and the nearer of it and the step before it
is kept, so the plan lands on the target to within one threshold step.
"""
from __future__ import annotations

import math

import numpy as np
from torch import fx, nn

from ..config import Config
from ..errors import InputError
from ..stages import Stages
from .costs import CostModel, mac_costs, param_costs
from .groups import Coupling
from .plan import (
    Budget,
    Plan,
    make_plan,
    removal_orders,
    select,
    select_counts,
    unit_widths,
)

__all__ = ["allocate"]


def allocate(model: nn.Module, gm: fx.GraphModule, coupling: Coupling, scores: np.ndarray,
             config: Config) -> tuple[np.ndarray, Budget]:
    """Removed units (boolean mask) meeting the config's target, and the budget reached.

    Raises:
        InputError: the target cannot be met with every group at `max_ratio`; the message
            gives the best reachable figure.

    Example:
        >>> removed, budget = allocate(model, graphs[0], coupling, scores, Config(target_macs=0.5))
    """
    metric, value = ("macs", config.target_macs) if config.target_macs is not None else ("params", config.target_params)
    cost = mac_costs(model, gm, coupling) if metric == "macs" else param_costs(model, coupling)
    target = value * cost.total if value <= 1 else float(value)
    search = _Search(coupling, scores, cost, config)
    lo, hi = 0, search.steps  # removal at step i: units scoring below the i-th threshold
    if search.estimate(hi) > target:
        best = search.estimate(hi)
        name = f"target_{metric}"
        raise InputError(
            f"{name}={value} asks to keep {target:,.0f} of {cost.total:,} {'MACs' if metric == 'macs' else metric}, "
            f"but with every group at max_ratio={config.max_ratio} the model keeps {best:,.0f} "
            f"({best / max(cost.total, 1):.3f} of it); raise max_ratio or {name}, or ignore fewer modules")
    while lo < hi:
        mid = (lo + hi) // 2
        if search.estimate(mid) <= target:
            hi = mid
        else:
            lo = mid + 1
    best = min({lo, max(lo - 1, 0)}, key=lambda i: abs(search.estimate(i) - target))
    removed = search.removed(best)
    return removed, Budget(metric, cost.total, int(round(target)), int(round(cost.estimate(removed))))


class _Search:
    """Removals by threshold step, memoised: step i removes, from each group, its free units
    whose normalised score lies below the i-th smallest normalised score of the model."""

    def __init__(self, coupling: Coupling, scores: np.ndarray, cost: CostModel, config: Config) -> None:
        self.coupling, self.scores, self.cost, self.round_to = coupling, scores, cost, config.round_to
        self.widths, self.orders = unit_widths(coupling), removal_orders(coupling, scores)
        self.sorted: list[np.ndarray] = []
        self.caps: list[int] = []
        for group, units in zip(coupling.groups, coupling.members):
            free = units[~coupling.frozen[units]]
            cap = min(group.prunable, math.floor(config.max_ratio * units.size)) if group.prunable > 0 else 0
            mean = float(scores[free].mean()) if free.size else 0.0
            norm = scores[free] / mean if mean > 0 else np.zeros(free.size)
            self.sorted.append(np.sort(norm) if cap else np.zeros(0))
            self.caps.append(cap)
        self.thresholds = np.unique(np.concatenate(self.sorted + [np.zeros(0)]))
        self.steps = int(self.thresholds.size)
        self._seen: dict[int, tuple[np.ndarray, float]] = {}

    def counts(self, step: int) -> list[int]:
        """Units each group loses at `step` (before rounding and equal counts)."""
        t = self.thresholds[step] if step < self.steps else np.inf
        return [min(int(np.searchsorted(s, t, side="left")) if t != np.inf else s.size, cap)
                for s, cap in zip(self.sorted, self.caps)]

    def removed(self, step: int) -> np.ndarray:
        if step not in self._seen:
            mask = select_counts(self.coupling, self.scores, self.counts(step), round_to=self.round_to,
                                 widths=self.widths, orders=self.orders)
            self._seen[step] = (mask, self.cost.estimate(mask))
        return self._seen[step][0]

    def estimate(self, step: int) -> float:
        self.removed(step)
        return self._seen[step][1]


def choose(model: nn.Module, gm: fx.GraphModule, coupling: Coupling, scores: np.ndarray, config: Config,
           stages: Stages) -> tuple[Plan, np.ndarray]:
    """The plan for these scores — at the config's ratio or within its budget — and the
    removed units."""
    budget = None
    if config.ratio is None:
        with stages.stage("budget"):
            removed, budget = allocate(model, gm, coupling, scores, config)
    with stages.stage("plan"):
        if config.ratio is not None:
            removed = select(coupling, scores, config.ratio, round_to=config.round_to)
        return make_plan(coupling, removed, config.ratio, model=model, budget=budget), removed
