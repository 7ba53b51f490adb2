"""Matrix products: batch dims broadcast, the contracted dims are coupled.

Zeroing a contracted index removes its contribution exactly, so `a @ b` is exact; scaled
dot-product attention scales by the head size unless told its scale, so its query/key width is
then marked inexact; its heads follow `_heads` (grouped-query attention included).
"""
from __future__ import annotations

import operator

import numpy as np
import torch
import torch.nn.functional as F

from ...core.labels import Labels
from ...errors import InputError
from ..attention import projection_inputs
from ..context import Ctx
from ..registry import register

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
    if len(sa) >= 3 and len(sb) >= 3:  # attention written out (q @ kᵀ, p @ v): heads in dim -3
        projection_inputs(ctx, a[-3], b[-3])
    batch = ctx.broadcast_merge([(Labels(a[:-2]), sa[:-2]), (Labels(b[:-2]), sb[:-2])],
                                out_shape=ctx.out_shape[:-2])
    return Labels([*batch, a[-2], b[-1]])


_KV_KEPT = ("key/value heads of grouped-query attention are kept (query heads leave in equal numbers "
            "from every group); prune_kv_heads=True removes whole groups")


def _repeats(kv: np.ndarray) -> int:
    """How many times each key/value head is repeated in a row (HF's `repeat_kv`), else 1."""
    run = int(np.argmax(kv != kv[0])) or kv.size
    if run > 1 and kv.size % run == 0 and np.array_equal(kv, np.repeat(kv[::run], run)):
        return run
    return 1


def _heads(ctx: Ctx, q: np.ndarray | None, kv: np.ndarray | None, n_q: int, n_kv: int) -> np.ndarray | None:
    """Output head labels. Query head h reads key/value head h // r: with r > 1 (grouped-query
    attention, native or with key/value heads repeated beforehand) the key/value heads stay and
    each group's query heads must keep equal counts, or whole groups leave (`prune_kv_heads`)."""
    if kv is None or q is None:
        return ctx.merge([q, kv]) if n_q == n_kv else q
    groups = n_kv if n_kv < n_q else (n_q // _repeats(kv) if (kv >= 0).all() else n_q)
    if groups == n_q:
        return ctx.merge([q, kv])
    per_group = q.reshape(groups, -1)
    kv_heads = kv if n_kv < n_q else kv[:: n_q // groups]
    if ctx.options.prune_kv_heads:
        ctx.merge([kv_heads, *per_group.T])
    else:
        ctx.freeze(kv, _KV_KEPT)
        ctx.dg.balance(per_group)
    return q


@register(F.scaled_dot_product_attention)
def attention(ctx: Ctx) -> Labels:
    """softmax(q kᵀ · scale) v on [..., heads, length, width]: heads as in `_heads`, the q/k
    width coupled (inexact when the scale is the default 1/√width), k/v length coupled."""
    if ctx.options.prune_head_dims and ctx.baked:
        raise InputError(
            f"prune_head_dims cannot narrow the heads of {ctx.where}: attention traced by torch.export "
            "(Hugging Face models, whose rotary embeddings pair dimensions across each head) keeps "
            "its head width; use prune_heads instead")
    (q, sq), (k, sk), (v, sv) = ctx.tensor_args()[:3]
    width = ctx.merge([q[-1], k[-1]])
    if ctx.arg(6, "scale") is None:
        ctx.inexact(width, "attention scale 1/sqrt(width) depends on the head width")
    ctx.inexact(ctx.merge([k[-2], v[-2]]), "softmax over the key length")
    if len(sq) < 3:
        return Labels([q[-2], v[-1]])
    projection_inputs(ctx, q[-3], k[-3], v[-3])
    heads = _heads(ctx, q[-3], ctx.merge([k[-3], v[-3]]), sq[-3], sk[-3])
    mask = ctx.arg(3, "attn_mask")
    if isinstance(mask_lab := ctx.lab(mask), Labels) and len(mask_lab) >= 3 and ctx.shape(mask)[-3] == sq[-3]:
        heads = ctx.merge([heads, mask_lab[-3]])  # a per-head bias (T5's relative positions)
    batch = ctx.broadcast_merge(
        [(Labels(t[:-3]), s[:-3]) for t, s in ((q, sq), (k, sk), (v, sv))], out_shape=ctx.out_shape[:-3]
    )
    return Labels([*batch, heads, q[-2], v[-1]])
