"""Importance of each removable unit: a norm over *all* of its coupled slices.

A unit (one channel, or one group of a grouped conv, …) owns slices of several tensors: output
rows of its producers, input columns of its consumers, norm affine entries. Its L2 score is the
norm over all of them together, so a coupled group has one ranking.
"""
from __future__ import annotations

import math
from collections.abc import Callable
from typing import TYPE_CHECKING

import numpy as np
import torch
from torch import nn

from ..config import Importance
from ..errors import InputError
from ..util import warn
from .criteria import data_scores, needs
from .groups import Coupling

if TYPE_CHECKING:
    from .calibrate import Stats

__all__ = ["score_units", "weight_spaces"]


def _checked(t: torch.Tensor, name: str, dims: list[int], importance: Importance) -> list[np.ndarray]:
    """`_slice_scores`, refused where a ranking would be meaningless: NaN / Inf weights (or
    scores), or no values at all (the meta device) for a criterion that reads them."""
    if t.is_meta and not callable(importance):
        raise InputError(f"parameter '{name}' is on the meta device: it has no values to rank by; "
                         "pass importance='random' or a callable(tensor, dim) that uses shapes only")
    try:
        scores = _slice_scores(t, dims, importance)
    except NotImplementedError as e:  # a callable returned a meta tensor
        raise InputError(f"importance on meta parameter '{name}' must return real scores: {e}") from e
    if not all(np.isfinite(s).all() for s in scores):
        what = "holds NaN or Inf values" if not bool(torch.isfinite(t).all()) else "has NaN or Inf importance scores"
        raise InputError(f"parameter '{name}' {what}: a ranking of its channels would be "
                         "meaningless; fix the weights or the importance first")
    return scores


def _slice_scores(t: torch.Tensor, dims: list[int], importance: Importance) -> list[np.ndarray]:
    """Per-index score contribution of tensor `t` along each of `dims` (summed over the other
    dims): the squared L2 norm or the L1 norm of each slice."""
    t = t.detach()
    if callable(importance):
        found = []
        for dim in dims:
            s = torch.as_tensor(importance(t.float(), dim))
            if s.shape != (t.shape[dim],):
                raise InputError(f"importance callable returned shape {tuple(s.shape)}, expected ({t.shape[dim]},)")
            found.append(s.double().cpu().numpy())
        return found
    return [s.double().cpu().numpy() for s in _powered_sums(t, dims, 1 if importance == "l1" else 2)]


CHUNK = 1 << 22
"""Elements powered at a time: a bfloat16 LLM weight is never copied whole to float32."""


def _powered_sums(t: torch.Tensor, dims: list[int], p: int) -> list[torch.Tensor]:
    """Σ |x|ᵖ over each slice of `t` along each of `dims` (a 1-D tensor: each entry on its own),
    in float32 or wider, in one pass over blocks of whole rows (dim 0) of about CHUNK elements,
    each powered once (into one reused buffer: a fresh one per block would page in its memory
    every time), its rows summed (dim 0's scores) and added up (every other dim's scores, from
    that sum). Both reductions run along contiguous memory: one strided reduction over a
    Linear's rows takes 15× longer (vgg16_bn's 25088-wide classifier: 2 s)."""
    dtype = torch.promote_types(t.dtype, torch.float32)
    flat = t.reshape(t.shape[0], -1)
    rows, width = flat.shape
    step = max(1, CHUNK // max(1, width))
    power = torch.abs if p == 1 else torch.square
    if rows <= step:  # one block: no buffer, no running totals
        x = power(flat.to(dtype))
        lead, tail = (x.sum(1) if 0 in dims else None), (x.sum(0) if any(dims) else None)
    else:
        lead = torch.empty(rows, dtype=dtype, device=t.device) if 0 in dims else None
        tail = torch.zeros(width, dtype=dtype, device=t.device) if any(dims) else None
        buffer = torch.empty(step, width, dtype=dtype, device=t.device)
        for start in range(0, rows, step):
            block = flat[start:start + step]
            x = power(block.to(dtype), out=buffer[:block.shape[0]])
            if lead is not None:
                lead[start:start + step] = x.sum(1)
            if tail is not None:
                tail += x.sum(0)
    return [lead if dim == 0 else tail.reshape(math.prod(t.shape[1:dim]), -1).sum(0).reshape(t.shape[dim], -1).sum(1)
            for dim in dims]


def score_units(model: nn.Module, coupling: Coupling, importance: Importance = "l2", *,
                stats: Stats | None = None, read: Callable[[str], torch.Tensor] | None = None,
                advance: Callable[[], None] | None = None) -> np.ndarray:
    """One score per unit; higher means more important (kept first).

    "random" draws from torch's global generator, so `torch.manual_seed` makes it repeatable.
    Data criteria ("taylor", "activation", "fluctuation", a `Criterion`) read `stats`
    (`core.calibrate`); see `core.criteria` for their formulas. Weight criteria read each
    parameter once, from the model or from `read(name)` (a checkpoint on disk, when the model
    lives on the meta device); `advance()` is called after each.
    """
    n = coupling.n_units
    if importance == "random":
        return torch.rand(n, dtype=torch.float64).numpy()
    wanted = _can_go(coupling)  # only units of groups that can lose some need a score
    if (reads := needs(importance)) is not None:
        if stats is None:
            raise InputError(f"importance {importance!r} needs calibration data: pass calibration=[batch, …]")
        stats = stats.for_coupling(coupling)
        unseen = wanted & ~stats.seen()
        if reads[0] and not reads[1] and unseen.any():
            where = sorted({coupling.groups[g].spaces[0] for g in coupling.group_of[unseen].tolist() if g >= 0})
            warn(f"{int(unseen.sum())} units have no calibration activations (no consumer input "
                 f"carries them; groups of {', '.join(where[:4])}): they score 0")
        return data_scores(importance, stats)
    params = dict(model.named_parameters())
    score = np.zeros(n, dtype=np.float64)
    ranked = weight_spaces(model, coupling)
    entries = _entry_scores([params[k] for k in ranked], 1 if importance == "l1" else 2) \
        if read is None and importance in ("l1", "l2") else None
    for i, (name, spaces) in enumerate(ranked.items()):
        t = params[name] if read is None else read(name)
        found = [entries[i]] if entries is not None and entries[i] is not None \
            else _checked(t, name, [sp.dim for sp in spaces], importance)
        for sp, scores in zip(spaces, found):
            np.add.at(score, coupling.units_of(sp), scores)
        if advance is not None:
            advance()
    return np.sqrt(score) if importance == "l2" else score


def _entry_scores(tensors: list[torch.Tensor], p: int) -> list[np.ndarray | None] | None:
    """|x|ᵖ of each entry of the 1-D tensors (norm affines and biases: most of a CNN's ranked
    parameters, 130 of efficientnet_b0's 212), computed for all of them at once: one by one,
    each costs the dispatches of `_powered_sums` for a few hundred numbers. None (each tensor
    then goes through `_checked`) when they do not share one device with values, or when a
    value is not finite, so that the error names the tensor."""
    flat = [t.detach() for t in tensors if t.dim() == 1]
    if not flat or len({t.device for t in flat}) > 1 or flat[0].is_meta:
        return None
    joined = torch.cat(flat)
    joined = joined.to(torch.promote_types(joined.dtype, torch.float32))
    powered = (joined.abs() if p == 1 else joined.square()).double().cpu().numpy()
    if not np.isfinite(powered).all():
        return None
    parts = iter(np.split(powered, np.cumsum([t.numel() for t in flat])[:-1]))
    return [next(parts) if t.dim() == 1 else None for t in tensors]


def weight_spaces(model: nn.Module, coupling: Coupling) -> dict[str, list]:
    """The parameters a weight criterion reads, each with its spaces whose units may leave."""
    params, can_go = dict(model.named_parameters()), _can_go(coupling)
    found: dict[str, list] = {}
    for sp in coupling.dg.spaces:
        if sp.name in params and can_go[coupling.units_of(sp)].any():
            found.setdefault(sp.name, []).append(sp)
    return found


def _can_go(coupling: Coupling) -> np.ndarray:
    """Per unit: whether its group may lose some."""
    can_go = np.zeros(coupling.n_units, dtype=bool)
    for group, units in zip(coupling.groups, coupling.members):
        can_go[units] = group.prunable > 0
    return can_go
