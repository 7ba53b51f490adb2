"""Matrix products: batch dims broadcast, the contracted dims are coupled.

Zeroing a contracted index removes its contribution exactly, so `a @ b` is exact; scaled
dot-product attention scales by the head size, so its query/key width is marked inexact.
"""
from __future__ import annotations

import operator

import torch
import torch.nn.functional as F

from ..labels import Labels
from .context import Ctx
from .registry import register

__all__ = ["matmul", "attention"]


@register(torch.matmul, operator.matmul, torch.bmm, torch.mm, "matmul", "bmm", "mm")
def matmul(ctx: Ctx) -> Labels:
    """`a @ b` for operands of at least two dimensions."""
    (a, sa), (b, sb) = ctx.tensor_args()[:2]
    if len(sa) < 2 or len(sb) < 2:
        ctx.freeze(a, "matmul with a vector")
        ctx.freeze(b, "matmul with a vector")
        return Labels([None] * len(ctx.out_shape))
    ctx.merge([a[-1], b[-2]])
    batch = ctx.broadcast_merge([(Labels(a[:-2]), sa[:-2]), (Labels(b[:-2]), sb[:-2])],
                                out_shape=ctx.out_shape[:-2])
    return Labels([*batch, a[-2], b[-1]])


@register(F.scaled_dot_product_attention)
def attention(ctx: Ctx) -> Labels:
    """softmax(q kᵀ / √E) v: q/k width is coupled (inexact: the scale), k/v length coupled."""
    (q, sq), (k, sk), (v, sv) = ctx.tensor_args()[:3]
    ctx.inexact(ctx.merge([q[-1], k[-1]]), "attention scale depends on the head size")
    ctx.inexact(ctx.merge([k[-2], v[-2]]), "softmax over the key length")
    batch = ctx.broadcast_merge(
        [(Labels(t[:-2]), s[:-2]) for t, s in ((q, sq), (k, sk), (v, sv))], out_shape=ctx.out_shape[:-2]
    )
    return Labels([*batch, q[-2], v[-1]])
