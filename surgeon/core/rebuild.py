"""Apply a Plan: new, smaller parameters and buffers, then each module's size attributes.

Every cut tensor is replaced by an `index_select` of its kept indices (a new `nn.Parameter` that
keeps `requires_grad` and a sliced `.grad`); tied tensors are replaced in every owner. Then the
resizer registered for each touched module type fixes the attributes its `forward` reads
(`out_channels`, `groups`, `num_features`, `normalized_shape`, …), and any counted int attribute
it left alone (ViT's `hidden_dim`) is set to its new size; the ancestors of a touched
module are resized too (an attention layer reads its projections' widths). The same routine
builds the verification reference, in which exact removals are zeroed instead of removed.
Bias compensation (`plan.shifts`) goes first, while every weight still has its full width.
"""
from __future__ import annotations

import copy
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from ..errors import PlanError
from ..ops.registry import finishers, load_optional, lookup_resizer
from .plan import Cut, Plan, Shift, signature

__all__ = ["apply_plan", "rebuild", "cut_tensor", "Undo", "clone", "PLAN_ATTR", "INPUTS_ATTR", "TIMINGS_ATTR"]

PLAN_ATTR, INPUTS_ATTR, TIMINGS_ATTR = "surgeon_plan", "surgeon_inputs", "surgeon_timings"
"""Attributes of a slim model holding the plan it was made by and (from `slim`) the example
inputs and the seconds per stage: `surgeon.verify(original, slim)` reads the first two, so the
plan travels with the model."""


@dataclass
class Undo:
    """What a rebuild replaced, to put the model back exactly if a later check fails."""

    tensors: list[tuple[dict, str, torch.Tensor]]
    attrs: list[tuple[object, type, dict]]

    def __call__(self) -> None:
        for store, key, old in reversed(self.tensors):
            store[key] = old
        for obj, cls, before in reversed(self.attrs):
            obj.__class__ = cls
            for added in [k for k in vars(obj) if not k.startswith("_") and k not in before]:
                delattr(obj, added)
            obj.__dict__.update(before)


def _owners(model: nn.Module) -> dict[int, list[tuple[str, dict, str]]]:
    """For every tensor: (module name, dict holding it, key) of each place it is stored."""
    owners: dict[int, list[tuple[str, dict, str]]] = defaultdict(list)
    for mname, m in model.named_modules(remove_duplicate=False):
        for store in (m._parameters, m._buffers):
            for key, t in store.items():
                if t is not None:
                    owners[id(t)].append((mname, store, key))
    return owners


def _submodule(model: nn.Module, modules: dict[str, nn.Module], path: str) -> nn.Module:
    """`model.get_submodule(path)`, from `modules` (every path of `model`) when it is there."""
    return modules[path] if path in modules else model.get_submodule(path)


def _lookup(model: nn.Module, modules: dict[str, nn.Module], name: str) -> torch.Tensor:
    mod, _, attr = name.rpartition(".")
    try:
        owner = _submodule(model, modules, mod)
    except AttributeError as e:
        raise PlanError(f"plan names tensor '{name}', which {type(model).__name__} does not have") from e
    t = owner._parameters.get(attr, owner._buffers.get(attr))
    if t is None:
        raise PlanError(f"plan names tensor '{name}', which {type(model).__name__} does not have")
    return t


def _sliced(old: torch.Tensor, cuts: list[Cut], drop: Callable[[Cut], tuple[int, ...]],
            zero: Callable[[Cut], tuple[int, ...]], kept: _Kept | None = None) -> torch.Tensor:
    dropped: dict[int, tuple[int, ...]] = {}
    for cut in cuts:
        if tuple(old.shape)[cut.dim] != cut.size:
            raise PlanError(f"{cut}: tensor has size {old.shape[cut.dim]} in dim {cut.dim}")
        dropped[cut.dim] = dropped.get(cut.dim, ()) + tuple(drop(cut))
    kept = _Kept() if kept is None else kept
    index = {d: i for d, gone in dropped.items() if (i := kept(old.shape[d], gone)) is not None}
    with torch.no_grad():
        new, private = old.detach(), False
        zeroed = [(cut.dim, sorted(set(z) - set(dropped[cut.dim]))) for cut in cuts if (z := zero(cut))]
        if zeroed and isinstance(old, nn.Parameter):
            new, private = new.clone(), True
            for dim, z in zeroed:
                new.index_fill_(dim, torch.tensor(z, dtype=torch.int64, device=new.device), 0)
        new = _gather(new, index, copy=not private)
        grad = _gather(old.grad, index, copy=True) if old.grad is not None else None
    if isinstance(old, nn.Parameter):
        new = nn.Parameter(new, requires_grad=old.requires_grad)
        new.grad = grad
    return new


class _Kept:
    """The kept indices of a dim of `size` that loses `dropped` (None: it keeps all), made once
    per distinct removal: a conv's output channels, its norm's four tensors and the next
    layer's input all share one."""

    def __init__(self) -> None:
        self._seen: dict[tuple[int, tuple[int, ...]], torch.Tensor | None] = {}

    def __call__(self, size: int, dropped: tuple[int, ...]) -> torch.Tensor | None:
        key = (size, dropped)
        if key not in self._seen:
            keep = np.ones(size, dtype=bool)
            keep[np.asarray(dropped, dtype=np.int64)] = False
            self._seen[key] = None if keep.all() else torch.from_numpy(np.flatnonzero(keep))
        return self._seen[key]


ONE_COPY_ABOVE = 1 << 22
"""Elements above which a tensor cut in several dims is gathered in one indexing copy: chained
`index_select`s (2-4× faster on conv weights) allocate and page in every intermediate — on
vgg16_bn's 4096×25088 classifier 0.3-1.2 s against 0.16-0.2 s for one copy."""


def _gather(t: torch.Tensor, index: dict[int, torch.Tensor], *, copy: bool) -> torch.Tensor:
    """`t` with only the `index` entries of each dim (`t` itself when none is cut, unless `copy`)."""
    if not index:
        return t.clone() if copy else t
    dims = sorted(index)
    if len(dims) > 1 and t.numel() > ONE_COPY_ABOVE:  # adjacent index tensors keep the dims in place
        span = range(dims[0], dims[-1] + 1)
        every = {d: index[d] if d in index else torch.arange(t.shape[d]) for d in span}
        shaped = [i.to(t.device).view([-1 if e == d else 1 for e in span]) for d, i in every.items()]
        return t[(slice(None),) * dims[0] + tuple(shaped)]
    for d in dims:
        t = t.index_select(d, index[d].to(t.device))
    return t


def cut_tensor(t: torch.Tensor, cuts: list[Cut]) -> torch.Tensor:
    """`t` without the indices `cuts` remove (what `rebuild` gives, for a tensor on its own)."""
    return _sliced(t, cuts, lambda c: c.remove, lambda c: ())


def _compensate(model: nn.Module, shifts: list[Shift], by_tensor: dict[str, list[Cut]], undo: Undo) -> None:
    """Add each shift's Δb to its layer's bias — a new parameter, created (and then cut as the
    weight's outputs are) where the layer has none."""
    owners = _owners(model) if shifts else {}
    for shift in shifts:
        module = model.get_submodule(shift.module)
        old = module._parameters["bias"]
        with torch.no_grad():
            delta = shift.delta(module)
            new = nn.Parameter(delta if old is None else old.detach() + delta,
                               requires_grad=module.weight.requires_grad if old is None else old.requires_grad)
        if old is None:
            undo.tensors.append((module._parameters, "bias", None))
            module._parameters["bias"] = new
            by_tensor[shift.bias] = [Cut(shift.bias, 0, c.size, c.remove, c.inexact, c.groups)
                                     for c in by_tensor.get(shift.weight, ()) if c.dim == 0]
            continue
        new.grad = old.grad
        for _, store, key in owners[id(old)]:
            undo.tensors.append((store, key, old))
            store[key] = new


def rebuild(model: nn.Module, plan: Plan, *, reference: bool = False, undo: Undo | None = None) -> Undo:
    """Apply `plan` to `model` in place; with `reference`, zero exact removals instead (and
    compensate only the biases `verify` cannot hold at their means: approximate shifts).

    Records every replacement in `undo` (a new one if None) and returns it.
    """
    load_optional()
    drop = (lambda c: c.inexact) if reference else (lambda c: c.remove)
    zero = (lambda c: c.remove) if reference else (lambda c: ())
    by_tensor: dict[str, list[Cut]] = defaultdict(list)
    for cut in plan.cuts:
        by_tensor[cut.tensor].append(cut)
    undo = Undo([], []) if undo is None else undo
    _compensate(model, [s for s in plan.shifts if s.approximate or not reference], by_tensor, undo)
    owners, modules, kept = _owners(model), dict(model.named_modules(remove_duplicate=False)), _Kept()
    touched: dict[str, dict] = {}
    for name, cuts in by_tensor.items():
        old = _lookup(model, modules, name)
        new = _sliced(old, cuts, drop, zero, kept)
        for mname, store, key in owners[id(old)]:
            undo.tensors.append((store, key, old))
            store[key] = new
            touched.setdefault(mname, {})
    for change in plan.sizes:
        n = change.inexact if reference else change.remove
        touched.setdefault(change.module, {})[change.attr] = change.size - n
    for mname in list(touched):
        parts = mname.split(".")
        for k in range(len(parts) if mname else 0):
            touched.setdefault(".".join(parts[:k]), {})
    for mname in sorted(touched, key=lambda n: -(n.count(".") + 1 if n else 0)):  # children first
        sizes = touched[mname]
        module = _submodule(model, modules, mname)
        fix = lookup_resizer(module)
        counts = {k: v for k, v in sizes.items() if type(getattr(module, k, None)) is int}
        if fix is None and not counts:
            continue
        before = _snapshot(module)
        undo.attrs.append((module, type(module), before))
        if fix is not None:
            fix(module, sizes)
        module.__dict__.update({k: v for k, v in counts.items() if getattr(module, k) == before.get(k)})
    for finish in finishers():
        finish(model, lambda obj: undo.attrs.append((obj, type(obj), _snapshot(obj))))
    return undo


def _snapshot(obj: object) -> dict:
    """Public attributes to restore on undo (containers copied; objects kept by reference, so
    a shared `config` stays shared)."""
    return {k: copy.copy(v) if isinstance(v, (list, dict, set)) else v
            for k, v in vars(obj).items() if not k.startswith("_")}


def clone(model: nn.Module) -> nn.Module:
    """Deep copy that also copies `.grad` (which `copy.deepcopy` of a Parameter drops)."""
    twin = copy.deepcopy(model)
    for p, q in zip(model.parameters(), twin.parameters()):
        if p.grad is not None:
            q.grad = p.grad.detach().clone()
    return twin


def apply_plan(model: nn.Module, plan: Plan, *, inplace: bool = False) -> nn.Module:
    """Return `model` (or a deep copy) rebuilt by `plan`, carrying the plan in `PLAN_ATTR`;
    the input is untouched on error."""
    if plan.signature and signature(model) != plan.signature:
        raise PlanError(
            f"this plan was made for another model (tensor names or shapes differ from "
            f"{type(model).__name__}'s); make a new one with surgeon.plan(model, ...)"
        )
    target = model if inplace else clone(model)
    undo = Undo([], [])
    try:
        rebuild(target, plan, undo=undo)
    except Exception:
        undo()
        raise
    setattr(target, PLAN_ATTR, plan)
    return target
