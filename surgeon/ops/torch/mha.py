"""`nn.MultiheadAttention`: whole heads (q, k, v rows and out-projection columns) leave together.

The packed `in_proj_weight` (or `q/k/v_proj_weight`) rows are viewed as [3, heads, head_dim].
The layer's own `forward` derives `head_dim = embed_dim // num_heads`, so once the attention
width differs from the embedding width the resizer switches the module to
`surgeon.layers.SlimMultiheadAttention` (same parameters, `isinstance` holds).
"""
from __future__ import annotations

import operator

import numpy as np
from torch import nn

from ...core.labels import empty
from ...layers import SlimMultiheadAttention
from ..attention import embed, head_units, out_projection
from ..context import Ctx
from ..registry import register, resizer

__all__ = ["multihead_attention", "resize_multihead_attention"]


def _unsupported(ctx: Ctx) -> str | None:
    m = ctx.module
    if type(m) not in (nn.MultiheadAttention, SlimMultiheadAttention):
        return f"{type(m).__name__} subclasses nn.MultiheadAttention: its heads are kept"
    if m.bias_k is not None or m.add_zero_attn:
        return "nn.MultiheadAttention with bias_k/bias_v or add_zero_attn: its heads are kept"
    weights_used = any(u.target is operator.getitem and u.args[1] == 1 and u.users for u in ctx.node.users)
    if weights_used and ctx.arg(4, "need_weights", True):
        return "the attention weights of nn.MultiheadAttention are used: its heads are kept"
    return None


@register(nn.MultiheadAttention, SlimMultiheadAttention)
def multihead_attention(ctx: Ctx) -> tuple:
    """Heads of q/k/v rows + out_proj columns; the inputs' widths are the embedding dims."""
    m = ctx.module
    inputs = [ctx.lab(ctx.arg(i, name)) for i, name in enumerate(("query", "key", "value"))]
    meta = ctx.node.meta["tensor_meta"]
    packed = m._qkv_same_embed_dim
    weights = ("in_proj_weight",) * 3 if packed else tuple(f"{p}_proj_weight" for p in "qkv")
    rows = np.concatenate([ctx.param(w, 0, active=True) for w in dict.fromkeys(weights)])
    if why := _unsupported(ctx):
        ctx.freeze(inputs, why)
        ctx.freeze(rows, why)
        return empty(meta)
    embed(ctx, *inputs)
    for w, x in zip(weights, inputs):
        ctx.bind(w, 1, x[-1])
    ctx.bind("in_proj_bias", 0, rows)
    h, d = m.num_heads, m.head_dim
    heads, dims = head_units(ctx, rows, 3, h, d)
    out = out_projection(ctx, "out_proj", heads, dims, h, d)
    return inputs[0].with_dim(-1, out), empty(meta[1])


@resizer(nn.MultiheadAttention)
def resize_multihead_attention(m: nn.MultiheadAttention, sizes: dict) -> None:
    """Heads, head width and input widths back into the attributes; switch class if needed."""
    m.num_heads = sizes.get("num_heads", m.num_heads)
    if m._qkv_same_embed_dim:
        width = m.in_proj_weight.shape[0] // 3
        m.embed_dim = m.kdim = m.vdim = m.in_proj_weight.shape[1]
    else:
        width = m.q_proj_weight.shape[0]
        m.embed_dim, m.kdim, m.vdim = (getattr(m, f"{p}_proj_weight").shape[1] for p in "qkv")
    m.head_dim = width // m.num_heads
    if width != m.embed_dim and type(m) is nn.MultiheadAttention:
        m.__class__ = SlimMultiheadAttention
