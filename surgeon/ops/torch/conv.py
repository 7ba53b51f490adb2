"""Convolutions (1d/2d/3d, grouped, depthwise, transposed): create output channel spaces.

A grouped conv whose groups have several inputs and several outputs keeps its `groups` and
narrows every group: input index j of every group leaves together (the weight's input
dimension is shared by the groups), outputs leave in equal numbers from every group
(`DepGraph.balance`). A depthwise conv (one input a group), or one output a group, couples
each group's inputs with its outputs, so it loses whole groups and `groups` shrinks with them.
Grouped transposed convs lose whole groups.
"""
from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch.nn.functional as F
from torch import fx, nn

from ...core.labels import Labels
from ..context import Ctx
from ..registry import register, resizer

__all__ = ["conv", "conv_transpose", "functional_conv", "resize_conv"]


def _couple_groups(ctx: Ctx, in_lab: np.ndarray | None, out: np.ndarray, groups: int) -> None:
    """Couple every input and output index of each group: groups leave whole."""
    cols: list[np.ndarray | None] = list(out.reshape(groups, -1).T)
    cols += [None] if in_lab is None else list(in_lab.reshape(groups, -1).T)
    ctx.merge(cols)


def _relate(ctx: Ctx, in_lab: np.ndarray | None, out: np.ndarray | None, shape: tuple[int, int],
            groups: int, bind_in: Callable[[np.ndarray | None], None]) -> bool:
    """Relate a conv's input and output channels (`shape`: their counts); True when whole
    groups leave (`groups` shrinks)."""
    if groups == 1:
        bind_in(in_lab)
        return False
    if min(shape[0], shape[1]) // groups > 1:
        if in_lab is not None:  # an index unprunable in one group is kept in all of them
            bind_in(ctx.merge(list(in_lab.reshape(groups, -1))))
        if out is not None:
            ctx.dg.balance(out.reshape(groups, -1))
        return False
    _couple_groups(ctx, in_lab, out if out is not None else np.full(shape[1], -1), groups)
    return True


@register(nn.Conv1d, nn.Conv2d, nn.Conv3d)
def conv(ctx: Ctx) -> Labels:
    """Output channels are a new space; input channels bind to weight dim 1."""
    m, shape = ctx.module, ctx.out_shape
    cdim = len(shape) - (m.weight.dim() - 2) - 1
    x = ctx.lab(ctx.arg(0, "input"))
    out = ctx.param("weight", 0, active=True)
    ctx.bind("bias", 0, out)
    whole = _relate(ctx, x[cdim], out, (m.in_channels, m.out_channels), m.groups,
                    lambda a: ctx.bind("weight", 1, a))
    if whole and out is not None:
        ctx.track("groups", out.reshape(m.groups, -1)[:, 0], m.groups)
    return _batch(x, len(shape), cdim).with_dim(cdim, out)


def _batch(x: Labels, n: int, cdim: int) -> Labels:
    """A conv treats every entry of a batch dimension alike: labels there pass (MViTv2 pools
    each attention head as one batch entry); spatial dimensions carry none."""
    return Labels([x[d] if d < cdim and d < len(x) else None for d in range(n)])


@register(nn.ConvTranspose1d, nn.ConvTranspose2d, nn.ConvTranspose3d)
def conv_transpose(ctx: Ctx) -> Labels:
    """Transposed conv: weight is [in, out/groups, k…]. Ungrouped, weight dim 1 is the output
    space; grouped, a group's input rows and its out/groups outputs leave together, so the
    output channels carry the atom of their group (weight dim 1 is shared by all groups)."""
    m, shape = ctx.module, ctx.out_shape
    cdim = len(shape) - (m.weight.dim() - 2) - 1
    x = ctx.lab(ctx.arg(0, "input"))
    if m.groups == 1:
        out = ctx.param("weight", 1, active=True)
        ctx.bind("weight", 0, x[cdim])
    else:
        rows = ctx.param("weight", 0, active=True).reshape(m.groups, -1)
        cols = list(rows.T) + ([] if x[cdim] is None else list(x[cdim].reshape(m.groups, -1).T))
        group = ctx.merge(cols)
        out = np.repeat(group, m.out_channels // m.groups)
    ctx.bind("bias", 0, out)
    return _batch(x, len(shape), cdim).with_dim(cdim, out)


@register(F.conv1d, F.conv2d, F.conv3d)
def functional_conv(ctx: Ctx) -> Labels:
    """`F.conv*d(x, weight, bias, …, groups)` with a weight tensor from the graph; a literal
    `groups` cannot shrink, so such a conv never loses whole groups."""
    shape = ctx.out_shape
    x, w, b = (ctx.lab(ctx.arg(i, n)) for i, n in ((0, "input"), (1, "weight"), (2, "bias")))
    cdim = len(shape) - (len(w) - 2) - 1
    out = w[0]
    ctx.dg.activate(out)
    if b is not None:
        ctx.merge([b[0], out])
    groups = ctx.arg(6, "groups", 1)
    channels = (ctx.shape(ctx.arg(0, "input"))[cdim], shape[cdim])
    count = channels[0] // ctx.shape(ctx.arg(1, "weight"))[1]
    if _relate(ctx, x[cdim], out, channels, count, lambda a: ctx.merge([w[1], a])) and not isinstance(groups, fx.Node):
        ctx.freeze(Labels([x[cdim], out]), "a grouped conv with a literal `groups` cannot lose whole groups")
    return Labels([None] * len(shape)).with_dim(cdim, out)


@resizer(nn.modules.conv._ConvNd)
def resize_conv(m: nn.modules.conv._ConvNd, sizes: dict) -> None:
    """Read channel counts back from the sliced weight; `groups` from the plan (whole groups
    left) or, for transposed convs, from the weight."""
    w = m.weight
    if m.transposed:
        m.groups = w.shape[0] // (m.in_channels // m.groups)
        m.in_channels, m.out_channels = w.shape[0], w.shape[1] * m.groups
        return
    m.groups = sizes.get("groups", m.groups)
    m.out_channels, m.in_channels = w.shape[0], w.shape[1] * m.groups
