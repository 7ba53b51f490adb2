"""Importance of each removable unit: a norm over *all* of its coupled slices.

A unit (one channel, or one group of a grouped conv, …) owns slices of several tensors: output
rows of its producers, input columns of its consumers, norm affine entries. Its L2 score is the
norm over all of them together, so a coupled group has one ranking.
"""
from __future__ import annotations

import numpy as np
import torch
from torch import nn

from ..config import Importance
from ..errors import InputError
from .groups import Coupling

__all__ = ["score_units"]


def _slice_scores(t: torch.Tensor, dim: int, importance: Importance) -> np.ndarray:
    """Per-index score contribution of tensor `t` along `dim` (summed over the other dims)."""
    t = t.detach().float()
    if callable(importance):
        s = torch.as_tensor(importance(t, dim))
        if s.shape != (t.shape[dim],):
            raise InputError(f"importance callable returned shape {tuple(s.shape)}, expected ({t.shape[dim]},)")
        return s.double().cpu().numpy()
    other = [d for d in range(t.dim()) if d != dim]
    if importance == "l1":
        return t.abs().sum(other).double().cpu().numpy() if other else t.abs().double().cpu().numpy()
    return t.pow(2).sum(other).double().cpu().numpy() if other else t.pow(2).double().cpu().numpy()


def score_units(model: nn.Module, coupling: Coupling, importance: Importance = "l2") -> np.ndarray:
    """One score per unit; higher means more important (kept first).

    "random" draws from torch's global generator, so `torch.manual_seed` makes it repeatable.
    """
    n = coupling.n_units
    if importance == "random":
        return torch.rand(n, dtype=torch.float64).numpy()
    params = dict(model.named_parameters())
    score = np.zeros(n, dtype=np.float64)
    for sp in coupling.dg.spaces:
        t = params.get(sp.name)
        if t is None:
            continue
        units = coupling.units_of(sp)
        np.add.at(score, units, _slice_scores(t, sp.dim, importance))
    return np.sqrt(score) if importance == "l2" else score
