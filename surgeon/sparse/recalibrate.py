"""Re-estimate BatchNorm statistics after surgery.

A slim model computes what the original computes with the removed channels zeroed — not what the
original computes: every BatchNorm after a pruned layer keeps running statistics measured with
the removed channels' contributions in. A few forward passes (no gradient step) re-measure them;
on real data this recovers most of the accuracy before any fine-tuning (docs/results.md).
"""
from __future__ import annotations

from collections.abc import Iterable

import torch
from torch import nn

from ..util import as_inputs

__all__ = ["recalibrate"]


def recalibrate(model: nn.Module, batches: Iterable[object]) -> nn.Module:
    """Reset every BatchNorm's running statistics to their average over `batches`, in place.

    Each batch is a tensor or a tuple of forward's positional inputs. Train/eval flags and
    momentum are restored afterwards; no parameter changes.

    Example:
        >>> slim = surgeon.slim(model, 0.5)
        >>> surgeon.recalibrate(slim, (x for x, _ in train_loader))
    """
    norms = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.track_running_stats]
    modes = {m: m.training for m in model.modules()}
    momenta = {m: m.momentum for m in norms}
    for m in norms:
        m.reset_running_stats()
        m.momentum = None  # cumulative average over all batches
    model.train()
    try:
        with torch.no_grad():
            for batch in batches:
                as_inputs(batch)(model)
    finally:
        for m, training in modes.items():
            m.training = training
        for m, momentum in momenta.items():
            m.momentum = momentum
    return model
