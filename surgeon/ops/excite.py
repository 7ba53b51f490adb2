"""Squeeze-and-excitation blocks as one call: `x · gate(expand(act(reduce(mean(x)))))`.

A block traced through costs the trace, the shape runs and propagation six nodes or more; as
one call it costs one (a third of EfficientNet's graph). The squeeze channels — `reduce`'s
rows, `expand`'s columns and a norm's entries between them — are a group of their own; `reduce`
reads and `expand` writes the channels of `x`, which pass through. Calibration reads both convs
inside the call (`core.calibrate`), so data criteria and bias compensation see what they see in
the block traced through. Library-neutral: the torchvision and timm handlers build on it.
"""
from __future__ import annotations

from typing import TYPE_CHECKING

from torch import nn

from ..core.labels import Labels
from .registry import lookup
from .torch.norm import PER_CHANNEL
from .torch.pointwise import pointwise

if TYPE_CHECKING:  # handlers only receive one
    from .context import Ctx

__all__ = ["plain_parts", "squeeze_excite"]


def plain_parts(convs: tuple[nn.Module, ...], activations: tuple[nn.Module, ...]) -> bool:
    """Ungrouped 1×1 convs and elementwise activations: what `squeeze_excite` describes."""
    return (all(type(c) is nn.Conv2d and c.groups == 1 and c.kernel_size == (1, 1) for c in convs)
            and all(lookup(a) is pointwise for a in activations))


def squeeze_excite(ctx: Ctx, name: str, reduce: str, expand: str, norm: str | None = None) -> Labels:
    """Relate `x` (argument `name`), the squeeze channels and the two convs (and a per-channel
    norm between them) of the block; the output carries the labels of `x`."""
    x = ctx.lab(ctx.arg(0, name))
    ctx.bind(f"{reduce}.weight", 1, x[1])
    squeeze = ctx.param(f"{reduce}.weight", 0, active=True)
    ctx.bind(f"{reduce}.bias", 0, squeeze)
    if norm:
        for t in PER_CHANNEL:
            ctx.bind(f"{norm}.{t}", 0, squeeze)
        ctx.track("num_features", squeeze, getattr(ctx.module, norm).num_features, module=f"{ctx.node.target}.{norm}")
    ctx.bind(f"{expand}.weight", 1, squeeze)
    ctx.bind(f"{expand}.weight", 0, x[1])
    ctx.bind(f"{expand}.bias", 0, x[1])
    return x
