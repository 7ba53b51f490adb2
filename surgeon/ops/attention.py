"""Multi-head attention: whole heads (or every head's width) leave together.

An attention layer with a fused q/k/v projection is one opaque call: its q, k and v rows are
viewed as [3, heads, head_dim]. With `prune_heads` the rows of one head (in q, k and v) and the
matching output-projection columns are one unit; with `prune_head_dims` index j of every head is
one unit (the count stays, every head narrows — inexact, since the 1/√head_dim scale changes).
The embedding dimension the layer reads and writes is frozen unless `prune_embed=True`.
"""
from __future__ import annotations

import numpy as np
from torch import nn

from ..labels import Labels, empty
from .context import Ctx
from .registry import register, resizer

__all__ = ["head_units", "fused_attention", "resize_heads", "multihead_attention"]

_EMBED = "embedding dim of an attention layer (pass prune_embed=True to prune it; not exact)"


def head_units(ctx: Ctx, rows: np.ndarray, parts: int, heads: int, head_dim: int) -> tuple[np.ndarray | None, np.ndarray | None]:
    """Couple `rows` viewed as [parts, heads, head_dim] into head units or head-dim units.

    Returns (per-head atoms, per-dim atoms); the mode not chosen is None.
    """
    grid = rows.reshape(parts, heads, head_dim)
    if ctx.options.prune_heads and not ctx.options.prune_head_dims:
        cols = grid.transpose(1, 0, 2).reshape(heads, -1)
        return ctx.merge(list(cols.T)), None
    if ctx.options.prune_head_dims:
        cols = grid.transpose(2, 0, 1).reshape(head_dim, -1)
        dims = ctx.merge(list(cols.T))
        ctx.inexact(dims, "attention scale 1/sqrt(head_dim) changes with the head width")
        return None, dims
    ctx.freeze(rows, "prune_heads=False and prune_head_dims=False")
    return None, None


def _tie(ctx: Ctx, attr: str, dim: int, heads: np.ndarray | None, dims: np.ndarray | None,
         n_heads: int, head_dim: int) -> None:
    """Couple a [heads·head_dim] dimension of tensor `attr` with the head (or head-dim) units."""
    atoms = ctx.param(attr, dim)
    if atoms is None:
        return
    grid = atoms.reshape(n_heads, head_dim)
    if heads is not None:
        ctx.merge([heads, *grid.T])
    elif dims is not None:
        ctx.merge([dims, *grid])


def _embed(ctx: Ctx, x: Labels) -> None:
    if not ctx.options.prune_embed:
        ctx.freeze(x[-1], _EMBED)


def fused_attention(ctx: Ctx, *, per_head: tuple[tuple[str, int], ...] = ()) -> Labels:
    """An attention module with `qkv` and `proj` Linears (timm's `Attention`, `WindowAttention`).

    `per_head` names tensor dimensions indexed by head (a relative position bias table).
    """
    m, x = ctx.module, ctx.lab(ctx.arg(0, "x"))
    h = m.num_heads
    d = ctx.tensor("qkv.weight").shape[0] // (3 * h)
    _embed(ctx, x)
    rows = ctx.param("qkv.weight", 0, active=True)
    ctx.bind("qkv.weight", 1, x[-1])
    ctx.bind("qkv.bias", 0, rows)
    heads, dims = head_units(ctx, rows, 3, h, d)
    for attr, dim in (("proj.weight", 1), ("gate.weight", 0), ("gate.bias", 0), ("norm.weight", 0), ("norm.bias", 0)):
        _tie(ctx, attr, dim, heads, dims, h, d)
    for attr, dim in per_head:
        if heads is not None and (atoms := ctx.param(attr, dim)) is not None:
            ctx.merge([heads, atoms])
    ctx.bind("gate.weight", 1, x[-1])
    if ctx.tensor("norm.weight") is not None:
        ctx.inexact(ctx.param("norm.weight", 0), "LayerNorm over the attention width")
    for norm in ("q_norm", "k_norm"):
        for p in ("weight", "bias"):
            if dims is not None:
                ctx.bind(f"{norm}.{p}", 0, dims)
    if heads is not None:
        ctx.track("num_heads", heads, h)
    if dims is not None:
        ctx.track("head_dim", dims, d)
    out = ctx.param("proj.weight", 0, active=True)
    ctx.bind("proj.bias", 0, out)
    return x.with_dim(-1, out)


def resize_heads(m: nn.Module, sizes: dict) -> None:
    """Heads / head width back into the attributes `forward` reads."""
    m.num_heads = sizes.get("num_heads", m.num_heads)
    head_dim = m.qkv.weight.shape[0] // (3 * m.num_heads)
    if "head_dim" in sizes:
        m.scale = head_dim ** -0.5
    if hasattr(m, "head_dim"):
        m.head_dim = head_dim
    if hasattr(m, "attn_dim"):
        m.attn_dim = m.num_heads * head_dim
    for norm in (getattr(m, "q_norm", None), getattr(m, "k_norm", None)):
        if isinstance(norm, nn.LayerNorm):
            norm.normalized_shape = (head_dim,)


try:
    from timm.layers import Attention as TimmAttention
    from timm.models.swin_transformer import WindowAttention as TimmWindowAttention
except ImportError:  # timm is optional
    TimmAttention = TimmWindowAttention = None

if TimmAttention is not None:
    register(TimmAttention)(fused_attention)
    register(TimmWindowAttention)(lambda ctx: fused_attention(ctx, per_head=(("relative_position_bias_table", 1),)))
    resizer(TimmAttention, TimmWindowAttention)(resize_heads)


@register(nn.MultiheadAttention)
def multihead_attention(ctx: Ctx) -> tuple:
    """`nn.MultiheadAttention` derives head_dim from the embedding width it reads, so its heads
    cannot leave while that width stays: its channels are kept (reported)."""
    for i, name in ((0, "query"), (1, "key"), (2, "value")):
        ctx.freeze(ctx.lab(ctx.arg(i, name)),
                   "nn.MultiheadAttention ties head_dim to the embedding width: its heads are kept")
    return empty(ctx.node.meta["tensor_meta"])
