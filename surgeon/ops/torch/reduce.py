"""Pooling, resampling, padding, reductions and softmax.

Pooling / interpolation / padding act on the trailing spatial dimensions and pass channels
through. A reduction or a softmax over a labelled dimension computes a statistic over the
channels, so removing them is marked inexact (an argmax over them is frozen); a p-norm
normalisation is not (zeroed entries add nothing to the norm).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import fx, nn

from ...core.labels import Labels
from ..context import Ctx
from ..registry import register

__all__ = ["pad", "reduction", "softmax", "normalize", "spatial_handler"]


def spatial_handler(k: int | None):
    def handler(ctx: Ctx) -> Labels:
        x = ctx.lab(ctx.arg(0, "input"))
        n = len(x) - 2 if k is None else k
        for d in range(len(x) - n, len(x)):
            if x[d] is not None:
                ctx.freeze(x[d], "a labelled dimension is pooled or resampled")
        out = list(x[: len(x) - n]) + [None] * n
        if ctx.returns_tuple:
            return (Labels(out), Labels(out))
        return Labels(out)

    return handler


for _k, _ops in {
    1: (nn.MaxPool1d, nn.AvgPool1d, nn.AdaptiveAvgPool1d, nn.AdaptiveMaxPool1d, nn.LPPool1d,
        F.max_pool1d, F.avg_pool1d, F.adaptive_avg_pool1d, F.adaptive_max_pool1d),
    2: (nn.MaxPool2d, nn.AvgPool2d, nn.AdaptiveAvgPool2d, nn.AdaptiveMaxPool2d, nn.LPPool2d,
        nn.FractionalMaxPool2d, nn.UpsamplingNearest2d, nn.UpsamplingBilinear2d,
        F.max_pool2d, F.avg_pool2d, F.adaptive_avg_pool2d, F.adaptive_max_pool2d),
    3: (nn.MaxPool3d, nn.AvgPool3d, nn.AdaptiveAvgPool3d, nn.AdaptiveMaxPool3d,
        F.max_pool3d, F.avg_pool3d, F.adaptive_avg_pool3d, F.adaptive_max_pool3d),
    None: (nn.Upsample, F.interpolate, F.upsample),
}.items():
    register(*_ops)(spatial_handler(_k))


@register(F.pad, nn.ZeroPad1d, nn.ZeroPad2d, nn.ZeroPad3d, nn.ConstantPad1d, nn.ConstantPad2d,
          nn.ConstantPad3d, nn.ReflectionPad1d, nn.ReflectionPad2d, nn.ReflectionPad3d,
          nn.ReplicationPad1d, nn.ReplicationPad2d, nn.ReplicationPad3d, nn.CircularPad2d)
def pad(ctx: Ctx) -> Labels:
    """Padding a labelled dimension would add unlabelled indices to it: that dim is frozen."""
    x = ctx.lab(ctx.arg(0, "input"))
    widths = ctx.module.padding if ctx.module is not None else ctx.arg(1, "pad")
    dims = list(x)
    for p in range(len(widths) // 2):
        d = len(x) - 1 - p
        if dims[d] is not None and (widths[2 * p] or widths[2 * p + 1]):
            ctx.freeze(dims[d], "a labelled dimension is padded")
            dims[d] = None
    return Labels(dims)


_REDUCE = ("mean", "sum", "amax", "amin", "std", "var", "norm", "logsumexp", "prod", "max",
           "min", "argmax", "argmin", "all", "any", "median")


@register(*_REDUCE, *(getattr(torch, n) for n in _REDUCE))
def reduction(ctx: Ctx) -> object:
    """`x.mean(dims, keepdim)` and friends; `max(x, y)` is elementwise."""
    if isinstance(ctx.arg(1, "other"), fx.Node) and ctx.shape(ctx.arg(1)) is not None:
        return ctx.broadcast_merge(ctx.tensor_args())
    x = ctx.lab(ctx.node.args[0])
    dims = ctx.arg(1, "dim")
    dims = range(len(x)) if dims is None else (dims if isinstance(dims, (list, tuple)) else [dims])
    dims = {d % len(x) for d in dims}
    keep = ctx.arg(2, "keepdim", False)
    name = ctx.op_name
    for d in dims:
        if name in ("argmax", "argmin", "max", "min", "median"):
            ctx.freeze(x[d], f"{name} over a labelled dimension")
        else:
            ctx.inexact(x[d], f"{name} over these channels")
    out = Labels([None if d in dims else lab for d, lab in enumerate(x) if keep or d not in dims])
    return (out, out) if ctx.returns_tuple else out


@register(nn.Softmax, nn.LogSoftmax, F.softmax, F.log_softmax, torch.softmax,
          torch.log_softmax, "softmax", "log_softmax")
def softmax(ctx: Ctx) -> Labels:
    """Normalises over `dim`: removing indices there changes every output (inexact)."""
    x = ctx.lab(ctx.arg(0, "input"))
    dim = ctx.module.dim if ctx.module is not None else ctx.arg(1, "dim")
    ctx.inexact(x[dim if dim is not None else -1], "softmax over these channels")
    return x


@register(F.normalize)
def normalize(ctx: Ctx) -> Labels:
    """Divides by a p-norm over `dim`: a zeroed index adds nothing to it, so removal is exact."""
    return ctx.lab(ctx.arg(0, "input"))
