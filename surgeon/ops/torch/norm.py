"""Normalisation layers and PReLU.

BatchNorm / InstanceNorm are per channel (removal is exact). GroupNorm keeps its statistics exact
only when whole groups leave, so each group's channels are coupled. LayerNorm (and
LocalResponseNorm) compute statistics over the channels: removal is marked inexact.
"""
from __future__ import annotations

import torch.nn.functional as F
from torch import nn

from ...core.labels import Labels
from ..context import Ctx
from ..registry import register, resizer

__all__ = ["PER_CHANNEL", "batch_norm", "group_norm", "group_norm_function", "layer_norm", "functional_layer_norm",
           "functional_batch_norm", "prelu", "local_response_norm"]

PER_CHANNEL = ("weight", "bias", "running_mean", "running_var")
"""A batch norm's tensors, one entry per channel."""

_BN = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d, nn.SyncBatchNorm,
       nn.InstanceNorm1d, nn.InstanceNorm2d, nn.InstanceNorm3d)


@register(*_BN)
def batch_norm(ctx: Ctx) -> Labels:
    """Per-channel affine and running statistics follow channel dimension 1."""
    x = ctx.lab(ctx.arg(0, "input"))
    unbatched = getattr(ctx.module, "_get_no_batch_dim", lambda: -1)()
    cdim = 0 if len(x) == unbatched else 1
    for attr in PER_CHANNEL:
        ctx.bind(attr, 0, x[cdim])
    ctx.track("num_features", x[cdim], ctx.module.num_features)
    return x


@register(nn.GroupNorm)
def group_norm(ctx: Ctx) -> Labels:
    """Couple each group's channels: GroupNorm loses whole groups."""
    x = ctx.lab(ctx.arg(0, "input"))
    m = ctx.module
    if x[1] is not None:
        ctx.merge(list(x[1].reshape(m.num_groups, -1).T))
    ctx.bind("weight", 0, x[1])
    ctx.bind("bias", 0, x[1])
    ctx.track("num_channels", x[1], m.num_channels)
    return x


def _layer_norm_dims(ctx: Ctx, x: Labels, n: int) -> None:
    for k in range(n):
        arr = x[len(x) - n + k]
        ctx.inexact(arr, "LayerNorm statistics run over these channels")
        ctx.track(f"normalized_shape.{k}", arr, ctx.out_shape[len(x) - n + k])


@register(nn.LayerNorm)
def layer_norm(ctx: Ctx) -> Labels:
    """Affine params follow the normalised (last) dimensions; removal is inexact."""
    x = ctx.lab(ctx.arg(0, "input"))
    n = len(ctx.module.normalized_shape)
    for k in range(n):
        ctx.bind("weight", k, x[len(x) - n + k])
        ctx.bind("bias", k, x[len(x) - n + k])
    _layer_norm_dims(ctx, x, n)
    return x


@register(F.layer_norm)
def functional_layer_norm(ctx: Ctx) -> Labels:
    """`F.layer_norm` inside a LayerNorm subclass (e.g. torchvision's LayerNorm2d)."""
    x = ctx.lab(ctx.arg(0, "input"))
    shape = ctx.arg(1, "normalized_shape")
    n = len(shape) if isinstance(shape, (list, tuple)) else 1
    found = ctx.enclosing()
    if found is None or not isinstance(found[1], nn.LayerNorm):
        ctx.freeze(Labels(x[len(x) - n:]), "normalized_shape is fixed outside an nn.LayerNorm")
        return x
    for i, name in ((2, "weight"), (3, "bias")):
        w = ctx.lab(ctx.arg(i, name))
        if w is not None:
            for k in range(n):
                ctx.merge([w[k], x[len(x) - n + k]])
    for k in range(n):
        ctx.inexact(x[len(x) - n + k], "LayerNorm statistics run over these channels")
    return x


@register(F.group_norm)
def group_norm_function(ctx: Ctx) -> Labels:
    """`F.group_norm(x, num_groups, weight, bias)`: each group's channels leave together."""
    x = ctx.lab(ctx.arg(0, "input"))
    if x[1] is not None:
        ctx.merge(list(x[1].reshape(ctx.arg(1, "num_groups"), -1).T))
    for i, name in ((2, "weight"), (3, "bias")):
        if isinstance(w := ctx.lab(ctx.arg(i, name)), Labels):
            ctx.merge([w[0], x[1]])
    return x


@register(F.batch_norm, F.instance_norm)
def functional_batch_norm(ctx: Ctx) -> Labels:
    """`F.batch_norm(x, running_mean, running_var, weight, bias, …)`: per channel."""
    x = ctx.lab(ctx.arg(0, "input"))
    for lab, _ in ctx.tensor_args()[1:]:
        ctx.merge([lab[0], x[1]])
    return x


@register(nn.PReLU)
def prelu(ctx: Ctx) -> Labels:
    """One slope per channel (dimension 1) unless a single shared slope."""
    x = ctx.lab(ctx.arg(0, "input"))
    if ctx.module.num_parameters > 1:
        ctx.bind("weight", 0, x[1])
    return x


@register(nn.LocalResponseNorm, F.local_response_norm)
def local_response_norm(ctx: Ctx) -> Labels:
    """Normalises across neighbouring channels: removal is inexact."""
    x = ctx.lab(ctx.arg(0, "input"))
    ctx.inexact(x[1], "LocalResponseNorm runs across channels")
    return x


@resizer(*_BN)
def resize_batch_norm(m: nn.Module, sizes: dict) -> None:
    m.num_features = sizes.get("num_features", m.num_features)


@resizer(nn.GroupNorm)
def resize_group_norm(m: nn.GroupNorm, sizes: dict) -> None:
    per_group = m.num_channels // m.num_groups
    m.num_channels = sizes.get("num_channels", m.num_channels)
    m.num_groups = m.num_channels // per_group


@resizer(nn.LayerNorm)
def resize_layer_norm(m: nn.LayerNorm, sizes: dict) -> None:
    if m.weight is not None:
        m.normalized_shape = tuple(m.weight.shape)
    else:
        m.normalized_shape = tuple(
            sizes.get(f"normalized_shape.{k}", s) for k, s in enumerate(m.normalized_shape)
        )


@resizer(nn.PReLU)
def resize_prelu(m: nn.PReLU, sizes: dict) -> None:
    m.num_parameters = m.weight.numel()
