"""`Config`: every option of `plan` / `slim` / `analyze` / `schedule`, validated once.

Users may build one and pass it (``surgeon.slim(model, Config(0.5, round_to=8))``, as torchao's
``quantize_(model, config)`` does) or use the keyword form (``surgeon.slim(model, 0.5,
round_to=8)``); both end here. A global budget (``target_macs`` / ``target_params``) replaces
the ratio: ``surgeon.slim(model, target_macs=0.5)``.
"""
from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Union

import torch
from torch import nn

from .errors import InputError

__all__ = ["Config", "Criterion", "Importance", "IMPORTANCES", "DATA_IMPORTANCES", "FRONTENDS", "make_config"]


@dataclass(frozen=True)
class Criterion:
    """An importance of your own computed from calibration data: `fn(stats)` returns one score
    per unit (higher is kept first), given `surgeon.core.calibrate.Stats` — per consumer input
    the mean and variance of each index, `stats.unit_sum(...)` to add them per unit, and with
    `gradients=True` also `stats.taylor`. Needs `calibration=` on the verb.

    Example:
        >>> rms = surgeon.Criterion(lambda s: np.sqrt(s.unit_sum(lambda site: site.var + site.mean ** 2)))
        >>> surgeon.slim(model, 0.5, importance=rms, calibration=batches)
    """

    fn: Callable[[Any], Any]
    gradients: bool = False

    def __post_init__(self) -> None:
        if not callable(self.fn) or not isinstance(self.gradients, bool):
            raise InputError(f"Criterion takes a callable(stats) -> scores and gradients=True/False, "
                             f"got {self.fn!r}, {self.gradients!r}")


Importance = Union[str, Callable[[torch.Tensor, int], torch.Tensor], Criterion]
DATA_IMPORTANCES = ("taylor", "activation", "fluctuation")
"""Criteria that read calibration data (`calibration=` on the verb)."""
IMPORTANCES = ("l2", "l1", "random", *DATA_IMPORTANCES)
FRONTENDS = ("auto", "fx", "export")


@dataclass(frozen=True)
class Config:
    """What to remove and how.

    Attributes:
        ratio: fraction of each coupled group's units removed, in [0, 1) (rounded down; each
            group keeps at least one unit). Leave it out when giving a target.
        target_macs: a global budget instead of `ratio`: the multiply-accumulates to keep (for
            the example inputs), as a fraction in (0, 1] of the model's or an absolute count
            (> 1). Units compete across groups on mean-normalised scores; the plan lands within
            2 % and reports the ratio each group lost.
        target_params: the same budget in parameters.
        max_ratio: with a target, no group loses more than this fraction of its units, in
            (0, 1] (default 0.9; each group still keeps at least one).
        ignore: modules (or their qualified names) whose output channels are kept.
        importance: "l2" (default), "l1", "random" or callable(tensor, dim) -> per-index scores
            (weights only); or from calibration data (`calibration=` on the verb): "taylor"
            (|Σ w·∂L/∂w| over the unit's slices), "activation" (mean squared activation at its
            consumers' inputs), "fluctuation" (activation variance × squared outgoing weights)
            or a `Criterion`.
        round_to: keep every group's width a multiple of this (hardware-friendly widths).
        prune_heads: attention layers lose whole heads (q, k, v rows and output columns).
        prune_head_dims: attention layers keep their head count and narrow every head instead.
        prune_embed: also prune a transformer's embedding width (LayerNorm: not exact).
        prune_kv_heads: grouped-query attention loses whole key/value groups with their query
            heads (a smaller KV cache); by default query heads leave in equal numbers from
            every group and the key/value heads stay.
        leaf_modules: module classes or names not to trace into (their channels are kept).
        frontend: "fx", "export" (torch.export, for models fx cannot trace, such as Hugging
            Face transformers) or "auto" (fx first, export when fx fails).
        strict: a handler that crashes is a bug and raises `HandlerError` (default); with
            False its channels are kept, with a warning.
        compensate: bias compensation — each removed unit's calibration mean times the
            weights reading it moves into those layers' biases (created where missing), so the
            slim model matches the original with removed units held at their means rather
            than zeroed. Needs `calibration=` on the verb; works with any importance.
    """

    ratio: float | None = None
    target_macs: float | None = None
    target_params: float | None = None
    max_ratio: float = 0.9
    ignore: tuple[nn.Module | str, ...] = ()
    importance: Importance = "l2"
    round_to: int = 1
    prune_heads: bool = True
    prune_head_dims: bool = False
    prune_embed: bool = False
    prune_kv_heads: bool = False
    leaf_modules: tuple[type | str, ...] = ()
    frontend: str = "auto"
    strict: bool = True
    compensate: bool = False

    def __post_init__(self) -> None:
        self._check_budget()
        if not callable(self.importance) and not isinstance(self.importance, Criterion) \
                and self.importance not in IMPORTANCES:
            raise InputError(f"importance must be one of {IMPORTANCES}, a callable(tensor, dim) or a "
                             f"surgeon.Criterion, got {self.importance!r}")
        if isinstance(self.round_to, bool) or not isinstance(self.round_to, int) or self.round_to < 1:
            raise InputError(f"round_to must be a positive integer, got {self.round_to!r}")
        if self.frontend not in FRONTENDS:
            raise InputError(f"frontend must be one of {FRONTENDS}, got {self.frontend!r}")
        for name in ("prune_heads", "prune_head_dims", "prune_embed", "prune_kv_heads", "strict", "compensate"):
            if not isinstance(getattr(self, name), bool):
                raise InputError(f"{name} must be True or False, got {getattr(self, name)!r}")
        for name in ("ignore", "leaf_modules"):
            value = getattr(self, name)
            if isinstance(value, (str, nn.Module, type)) or not isinstance(value, Sequence):
                raise InputError(f"{name} must be a list or tuple, got {value!r}")
            object.__setattr__(self, name, tuple(value))

    def _check_budget(self) -> None:
        """Exactly one of `ratio`, `target_macs`, `target_params`, each in its range."""
        given = [n for n in ("ratio", "target_macs", "target_params") if getattr(self, n) is not None]
        if len(given) != 1:
            raise InputError(f"give one of ratio, target_macs or target_params, got {given or 'none'}; "
                             "e.g. ratio=0.5 removes half of every group's channels, target_macs=0.5 "
                             "keeps half of the MACs")
        value = getattr(self, given[0])
        if isinstance(value, bool) or not isinstance(value, (int, float)) or math.isnan(value):
            raise InputError(f"{given[0]} must be a number, got {value!r}")
        if given[0] == "ratio" and not 0 <= value < 1:
            raise InputError(f"ratio must be a number in [0, 1), got {value!r}; e.g. 0.5 removes half "
                             "of every group's channels")
        if given[0] != "ratio" and not 0 < value < math.inf:
            raise InputError(f"{given[0]} must be a fraction in (0, 1] to keep or a count > 1, got {value!r}")
        m = self.max_ratio
        if isinstance(m, bool) or not isinstance(m, (int, float)) or math.isnan(m) or not 0 < m <= 1:
            raise InputError(f"max_ratio must be a number in (0, 1], got {m!r}")


def make_config(ratio: float | Config | None, options: dict[str, Any]) -> Config:
    """The `Config` of a verb called as ``verb(model, ratio_or_config, **options)``.

    Example:
        >>> make_config(0.5, {"round_to": 8}).round_to
        8
    """
    names = {f.name for f in dataclasses.fields(Config)} - {"ratio"}
    unknown = sorted(set(options) - names)
    if unknown:
        raise InputError(f"unknown option(s) {unknown}; the options are {sorted(names)}")
    if isinstance(ratio, Config):
        return dataclasses.replace(ratio, **options) if options else ratio
    if ratio is None and options.get("target_macs") is None and options.get("target_params") is None:
        raise InputError("pass a ratio (e.g. 0.5), target_macs= or target_params= (e.g. 0.5), "
                         "or a surgeon.Config")
    return Config(ratio, **options)
