"""Data-aware importance: one score per unit from calibration statistics (`calibrate.Stats`).

Every criterion scores a whole coupled unit, summed over every slice (or consumer input) it
spans, as the L2 norm does over weights:

- "taylor" — first-order Taylor expansion of the loss when the unit is zeroed,
  Σ_batches |Σ_{w in the unit's slices} w · ∂L/∂w| (Molchanov et al. 2019, "Importance
  Estimation for Neural Network Pruning", group form; LLM-Pruner, Ma et al. 2023).
- "activation" — Σ over the unit's consumer inputs and indices of E[x²], the mean squared
  activation (per head: the squared norm of the head's output) (Minitron, Muralidharan et
  al. 2024, "Compact Language Models via Pruning and Knowledge Distillation").
- "fluctuation" — Σ over the same indices of Var[x] · ‖W_{:,i}‖², the activation's variance
  times the squared norm of the weights reading it (FLAP, An et al. 2024, "Fluctuation-based
  Adaptive Structured Pruning for Large Language Models").
- a `surgeon.Criterion(fn)`: `fn(stats)` → one score per unit.
"""
from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

import numpy as np
import torch

from ..config import Criterion, Importance
from ..errors import InputError

if TYPE_CHECKING:
    from .calibrate import Stats

__all__ = ["CRITERIA", "needs", "data_scores"]


def taylor(stats: Stats) -> np.ndarray:
    """Σ_batches |Σ w·∂L/∂w| over the unit's slices."""
    return stats.taylor


def activation(stats: Stats) -> np.ndarray:
    """Σ over the unit's consumer-input indices of the mean squared activation."""
    return stats.unit_sum(lambda s: s.var + s.mean ** 2)


def fluctuation(stats: Stats) -> np.ndarray:
    """Σ over the unit's consumer-input indices of Var[x_i] · ‖W_{:,i}‖²."""
    return stats.unit_sum(lambda s: s.var * s.out_norm)


CRITERIA: dict[str, Callable[[Stats], np.ndarray]] = {
    "taylor": taylor, "activation": activation, "fluctuation": fluctuation,
}


def needs(importance: Importance) -> tuple[bool, bool] | None:
    """(activations, gradients) a criterion reads from calibration data; None for weight-only
    criteria."""
    if isinstance(importance, Criterion):
        return True, importance.gradients
    if isinstance(importance, str) and importance in CRITERIA:
        return importance != "taylor", importance == "taylor"
    return None


def data_scores(importance: Importance, stats: Stats) -> np.ndarray:
    """One score per unit from the statistics; a callable's result is checked."""
    fn = importance.fn if isinstance(importance, Criterion) else CRITERIA[importance]
    scores = fn(stats)
    if isinstance(scores, torch.Tensor):
        scores = scores.detach().cpu().double().numpy()
    scores = np.asarray(scores, dtype=np.float64)
    if scores.shape != (stats.n_units,):
        raise InputError(f"importance {getattr(fn, '__name__', fn)!r} returned shape {scores.shape}; "
                         f"expected one score per unit, ({stats.n_units},)")
    if not np.isfinite(scores).all():
        raise InputError("the calibration statistics give NaN or Inf importance scores (NaN/Inf "
                         "activations or gradients): check the calibration data and the weights")
    return scores
