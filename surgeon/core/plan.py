"""Plan: which indices leave which tensors, and why nothing else can — JSON-able.

A plan is computed from a Coupling (units and groups) and unit scores: in each group the
`floor(ratio · units)` lowest-scored unfrozen units leave (at least one unit stays, and with
`round_to=N` the kept count is rounded up to a multiple of N), or, under a global budget, the
count `core.budget` chose for that group. It lists, per tensor dimension,
the indices removed (and which of those belong to inexact groups), and the size attributes that
change, so it can be applied to the model later (`Plan.apply`) or sent to other processes.
"""
from __future__ import annotations

import hashlib
import json
import math
from dataclasses import asdict, dataclass, field

import numpy as np
import torch
from torch import nn

from ..errors import PlanError
from .atoms import distinct
from .balance import remove_lowest
from .groups import Coupling, Group

__all__ = ["Cut", "SizeChange", "Budget", "Shift", "Plan", "select", "select_counts", "removal_orders",
           "unit_widths",
           "make_plan", "signature"]


@dataclass(frozen=True)
class Cut:
    """Indices removed from dimension `dim` of parameter/buffer `tensor` (of size `size`)."""

    tensor: str
    dim: int
    size: int
    remove: tuple[int, ...]
    inexact: tuple[int, ...] = ()
    groups: tuple[int, ...] = ()
    """The group each removed index belongs to (aligned with `remove`): `verify` probes groups."""

    def __repr__(self) -> str:
        return f"Cut({self.tensor}[{self.dim}]: {self.size} -> {self.size - len(self.remove)})"


@dataclass(frozen=True)
class SizeChange:
    """Module attribute counting indices (e.g. `num_features`): `size` minus `remove`."""

    module: str
    attr: str
    size: int
    remove: int
    inexact: int = 0


@dataclass(frozen=True)
class Budget:
    """A global budget and what the plan reaches: `metric` ("macs" or "params") counts of the
    whole model for the example inputs — `total` before, `target` asked for, `reached` by the
    plan (estimated: exact for parameters and for conv / linear MACs)."""

    metric: str
    total: int
    target: int
    reached: int

    def __repr__(self) -> str:
        return (f"Budget({self.metric}: {self.total} -> {self.reached}, target {self.target}, "
                f"keep {self.reached / max(self.total, 1):.3f})")


@dataclass(frozen=True)
class Shift:
    """Bias compensation at one consumer (`compensate=True`): its removed input indices `index`
    are replaced by their calibration means `mean`, so `rebuild` adds W[:, index] · mean (summed
    over a conv's kernel) to the bias of `module` — creating it when `created`. `groups` holds
    each index's group; `approximate` says why the bias is not exact there ("" when it is)."""

    module: str
    weight: str
    index: tuple[int, ...]
    mean: tuple[float, ...]
    groups: tuple[int, ...] = ()
    created: bool = False
    approximate: str = ""

    @property
    def bias(self) -> str:
        """Name of the bias the shift goes into."""
        return f"{self.module}.bias" if self.module else "bias"

    def delta(self, layer: nn.Module) -> torch.Tensor:
        """Δb = W[:, index] · mean per output of `layer` (a conv's taps summed, group by group)."""
        w = layer.weight.detach().double()
        taps = w.flatten(2).sum(2) if w.dim() > 2 else w
        out, per_group = taps.shape
        groups = getattr(layer, "groups", 1)
        mean = torch.zeros(groups * per_group, dtype=torch.float64, device=w.device)
        mean[list(self.index)] = torch.tensor(self.mean, dtype=torch.float64, device=w.device)
        delta = (taps.view(groups, out // groups, per_group) * mean.view(groups, 1, per_group)).sum(-1)
        return delta.reshape(out).to(layer.weight.dtype)

    def __repr__(self) -> str:
        how = f", approximate: {self.approximate}" if self.approximate else ""
        return f"Shift({self.bias}: {len(self.index)} inputs held at their means{how})"


@dataclass(frozen=True)
class Plan:
    """What a slim operation removes. `apply(model)` performs it.

    `ratio` is the uniform ratio asked for (None under a global budget, which `budget`
    describes); `ratios` holds the fraction of its units each group loses; `shifts` the bias
    compensation of each consumer (`compensate=True`)."""

    ratio: float | None
    cuts: tuple[Cut, ...]
    sizes: tuple[SizeChange, ...]
    groups: tuple[Group, ...]
    removed: tuple[int, ...] = field(default=())
    signature: str = ""
    ratios: tuple[float, ...] = ()
    budget: Budget | None = None
    shifts: tuple[Shift, ...] = ()

    def __repr__(self) -> str:
        pruned = sum(1 for r in self.removed if r)
        how = f"ratio={self.ratio}" if self.budget is None else repr(self.budget)
        shifts = f", biases compensated={len(self.shifts)}" if self.shifts else ""
        return f"Plan({how}, groups={len(self.groups)} ({pruned} pruned), cuts={len(self.cuts)}{shifts})"

    @property
    def exact(self) -> bool:
        """True when every pruned group's removal is exact (mask-equivalent)."""
        return all(g.exact for g, r in zip(self.groups, self.removed) if r)

    def apply(self, model: nn.Module, *, inplace: bool = False) -> nn.Module:
        """Rebuild `model` (a deep copy unless `inplace`) with the planned indices removed.

        Example:
            >>> p = surgeon.plan(model, 0.5)
            >>> slim = p.apply(model)
        """
        from .rebuild import apply_plan  # a plan is data; applying it is the rebuild stage's job

        return apply_plan(model, self, inplace=inplace)

    def to_json(self) -> str:
        """Serialise (for storage, or to broadcast from rank 0)."""
        return json.dumps(asdict(self))

    @classmethod
    def from_json(cls, text: str) -> Plan:
        """Inverse of `to_json`."""
        d = json.loads(text)
        try:
            return cls(
                ratio=d["ratio"],
                cuts=tuple(Cut(c["tensor"], c["dim"], c["size"], tuple(c["remove"]), tuple(c["inexact"]),
                               tuple(c.get("groups", ()))) for c in d["cuts"]),
                sizes=tuple(SizeChange(**s) for s in d["sizes"]),
                groups=tuple(Group(**{k: tuple(v) if isinstance(v, list) else v for k, v in g.items()}) for g in d["groups"]),
                removed=tuple(d["removed"]),
                signature=d.get("signature", ""),
                ratios=tuple(d.get("ratios") or _ratios(d["groups"], d["removed"])),
                budget=Budget(**d["budget"]) if d.get("budget") else None,
                shifts=tuple(Shift(**{k: tuple(v) if isinstance(v, list) else v for k, v in s.items()})
                             for s in d.get("shifts", ())),
            )
        except (KeyError, TypeError) as e:
            raise PlanError(f"not a surgeon plan: {e}") from e


def signature(model: nn.Module) -> str:
    """Fingerprint of a model's tensor names and shapes (a plan fits only its own model)."""
    items = [f"{n}:{tuple(t.shape)}" for n, t in [*model.named_parameters(), *model.named_buffers()]]
    return hashlib.sha1("\n".join(items).encode()).hexdigest()


def _ratios(groups: list[dict] | tuple[Group, ...], removed: list[int] | tuple[int, ...]) -> list[float]:
    """Fraction of its units each group loses (plans saved before `ratios` existed)."""
    units = [g["units"] if isinstance(g, dict) else g.units for g in groups]
    return [r / n if n else 0.0 for r, n in zip(removed, units)]


def unit_widths(coupling: Coupling) -> list[int]:
    """Per group, the fewest indices one unit spans in any of its creating spaces: 1 for plain
    channels, a group's channels for grouped convs, 3·head_dim for attention heads."""
    widths = [0] * len(coupling.groups)
    for i in coupling.dg.active:
        units = coupling.units_of(coupling.dg.spaces[i])
        g = int(coupling.group_of[units[0]])
        w = units.size // distinct(units).size
        widths[g] = min(widths[g], w) if widths[g] else w
    return widths


def select(coupling: Coupling, scores: np.ndarray, ratio: float, *, round_to: int = 1) -> np.ndarray:
    """Boolean mask of removed units: per group, the `floor(ratio · units)` lowest-scored
    unfrozen ones (`select_counts`)."""
    counts = [math.floor(ratio * units.size) for units in coupling.members]
    return select_counts(coupling, scores, counts, round_to=round_to)


def removal_orders(coupling: Coupling, scores: np.ndarray) -> list[np.ndarray]:
    """Per group, its unfrozen units lowest-scored first (ties: lower unit id)."""
    orders = []
    for units in coupling.members:
        free = units[~coupling.frozen[units]]
        orders.append(free[np.lexsort((free, scores[free]))])
    return orders


def select_counts(coupling: Coupling, scores: np.ndarray, counts: list[int], *, round_to: int = 1,
                  widths: list[int] | None = None, orders: list[np.ndarray] | None = None) -> np.ndarray:
    """Boolean mask of removed units: in group g, the `counts[g]` lowest-scored unfrozen ones
    (in a group with equal-count constraints, the cheapest removal that keeps them:
    `balance`). `round_to` rounds the kept *width* up to a multiple: a unit spanning w indices
    counts w times. `widths` (`unit_widths`) and `orders` (`removal_orders`) are computed when
    not given; pass them when selecting repeatedly."""
    removed = np.zeros(coupling.n_units, dtype=bool)
    widths = unit_widths(coupling) if widths is None else widths
    orders = removal_orders(coupling, scores) if orders is None else orders
    for group, units, width, count, order in zip(coupling.groups, coupling.members, widths, counts, orders):
        n = units.size
        keep = n - count
        step = round_to // math.gcd(round_to, max(width, 1))
        keep = min(n, math.ceil(keep / step) * step)
        if group.id in coupling.blocks:  # equal counts: chunks, grouped convs, query heads per group
            removed[remove_lowest(units, ~coupling.frozen, scores, coupling.blocks[group.id], n - keep,
                                  step=step, spaces=coupling.spaces_of(group.id))] = True
            continue
        removed[order[:min(n - keep, group.prunable)]] = True
    _keep_one_per_space(coupling, scores, removed)
    return removed


def _keep_one_per_space(coupling: Coupling, scores: np.ndarray, removed: np.ndarray) -> None:
    """A layer must keep an output: restore the best unit of any emptied creating space."""
    for i in coupling.dg.active:
        units = coupling.units_of(coupling.dg.spaces[i])
        if removed[units].all():
            removed[units[np.argmax(scores[units])]] = False


def make_plan(coupling: Coupling, removed: np.ndarray, ratio: float | None, *, model: nn.Module,
              budget: Budget | None = None) -> Plan:
    """Turn removed units into per-tensor cuts and size changes."""
    # group_of is -1 for units in no group: the trailing False
    unit_inexact = np.array([not g.exact for g in coupling.groups] + [False])[coupling.group_of]
    cuts = []
    for sp in coupling.dg.spaces:
        units = coupling.units_of(sp)
        idx = np.flatnonzero(removed[units])
        if idx.size:
            cuts.append(Cut(sp.name, sp.dim, sp.size, tuple(idx.tolist()),
                            tuple(idx[unit_inexact[units[idx]]].tolist()),
                            tuple(coupling.group_of[units[idx]].tolist())))
    sizes = []
    for (module, attr), labels in coupling.dg.sizes.items():
        on = labels >= 0
        gone = np.zeros(labels.size, dtype=bool)
        gone[on] = removed[coupling.unit[labels[on]]]
        if gone.any():
            bad = np.zeros(labels.size, dtype=bool)
            bad[on] = unit_inexact[coupling.unit[labels[on]]]
            sizes.append(SizeChange(module, attr, labels.size, int(gone.sum()), int((gone & bad).sum())))
    per_group = [int(removed[u].sum()) for u in coupling.members]
    return Plan(ratio=ratio, cuts=tuple(cuts), sizes=tuple(sizes), groups=tuple(coupling.groups),
                removed=tuple(per_group), signature=signature(model),
                ratios=tuple(_ratios(coupling.groups, per_group)), budget=budget)
