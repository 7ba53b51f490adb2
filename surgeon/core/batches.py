"""Calibration batches: each one's inputs and targets, checked against the example inputs, and
the default loss of the gradient criteria."""
from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from torch.utils._pytree import tree_leaves

from ..errors import InputError
from ..util import Inputs, as_inputs

__all__ = ["LossFn", "split_batch", "default_loss"]

LossFn = Callable[[Any, Any], torch.Tensor]
"""`loss_fn(output, targets) -> scalar tensor` (targets None when batches hold inputs only)."""


def default_loss(output: Any, targets: Any) -> torch.Tensor:
    """Without targets: the mean squared output (summed over output tensors). With integer
    targets: cross-entropy of the first output (class logits, classes in dim 1 or last)."""
    outs = [t for t in tree_leaves(output) if isinstance(t, torch.Tensor) and t.is_floating_point()]
    if targets is None:
        return sum(t.float().square().mean() for t in outs)
    logits = outs[0].float()
    if not isinstance(targets, torch.Tensor) or targets.is_floating_point():
        raise InputError("the default loss takes integer class targets; pass loss_fn=(output, targets) -> loss")
    if logits.dim() == targets.dim() + 1 and logits.shape[:-1] == targets.shape and logits.dim() > 2:
        logits = logits.movedim(-1, 1)  # [B, T, V] language-model logits
    return F.cross_entropy(logits, targets)


def _fits(inputs: Inputs, example: Inputs) -> bool:
    return len(inputs.args) == len(example.args) and set(inputs.kwargs) <= set(example.kwargs)


def split_batch(batch: Any, example: Inputs) -> tuple[Inputs, Any]:
    """(inputs, targets) of one calibration batch: inputs as `example_inputs` accepts them, or
    an (inputs, targets) pair; shapes must be the example's, any batch size."""
    try:
        inputs, targets = as_inputs(batch), None
    except InputError:
        inputs = None
    if (inputs is None or not _fits(inputs, example)) and isinstance(batch, (tuple, list)) and len(batch) == 2:
        inputs, targets = as_inputs(batch[0]), batch[1]
    if inputs is None or not _fits(inputs, example):
        raise InputError(f"a calibration batch must be the model's inputs like the example inputs "
                         f"({example.describe()}), or an (inputs, targets) pair; got {type(batch).__name__}")
    inputs = inputs.with_defaults(**{k: v for k, v in example.kwargs.items() if not isinstance(v, torch.Tensor)})
    want = {**dict(enumerate(example.args)), **example.kwargs}
    for key, got in {**dict(enumerate(inputs.args)), **inputs.kwargs}.items():
        ref = want[key]
        if isinstance(ref, torch.Tensor) and (not isinstance(got, torch.Tensor) or got.shape[1:] != ref.shape[1:]):
            shape = tuple(got.shape) if isinstance(got, torch.Tensor) else type(got).__name__
            raise InputError(f"calibration batch input {key!r} has shape {shape}; expected "
                             f"(N, {', '.join(map(str, ref.shape[1:]))}) like the example inputs "
                             f"({example.describe()}), any batch size N")
    device = next((t.device for t in example.tensors()), None)
    return (inputs.map(lambda t: t.to(device)) if device is not None else inputs), targets
