"""Multi-head attention: whole heads (or every head's width) leave together.

An attention layer with a fused q/k/v projection is one opaque call: its q, k and v rows are
viewed as [3, heads, head_dim]. With `prune_heads` the rows of one head (in q, k and v) and the
matching output-projection columns are one unit; with `prune_head_dims` index j of every head is
one unit (the count stays, every head narrows — inexact, since the 1/√head_dim scale changes).
The embedding dimension the layer reads and writes is frozen unless `prune_embed=True`.
Library-neutral: the timm, torchvision and torch handlers build on these helpers.
"""
from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
from torch import nn

from ..core.labels import Labels

if TYPE_CHECKING:  # handlers only receive one
    from .context import Ctx

__all__ = ["head_units", "tie", "embed", "projection_inputs", "out_projection", "fused_attention", "resize_heads"]

_EMBED = "embedding dim of an attention layer (pass prune_embed=True to prune it; not exact)"


def head_units(ctx: Ctx, rows: np.ndarray, parts: int, heads: int, head_dim: int, *,
               fixed_scale: bool = False) -> tuple[np.ndarray | None, np.ndarray | None]:
    """Couple `rows` viewed as [parts, heads, head_dim] into head units or head-dim units.

    Narrower heads are exact only when the layer's scale does not follow the head width
    (`fixed_scale`). Returns (per-head atoms, per-dim atoms); the mode not chosen is None.
    """
    grid = rows.reshape(parts, heads, head_dim)
    if ctx.options.prune_heads and not ctx.options.prune_head_dims:
        cols = grid.transpose(1, 0, 2).reshape(heads, -1)
        return ctx.merge(list(cols.T)), None
    if ctx.options.prune_head_dims:
        cols = grid.transpose(2, 0, 1).reshape(head_dim, -1)
        dims = ctx.merge(list(cols.T))
        if not fixed_scale:
            ctx.inexact(dims, "attention scale 1/sqrt(head_dim) changes with the head width")
        return None, dims
    ctx.freeze(rows, "prune_heads=False and prune_head_dims=False")
    return None, None


def tie(ctx: Ctx, attr: str, dim: int, heads: np.ndarray | None, dims: np.ndarray | None,
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


def embed(ctx: Ctx, *inputs: Labels) -> None:
    """The embedding width an attention layer reads stays unless `prune_embed`."""
    if not ctx.options.prune_embed:
        for x in inputs:
            ctx.freeze(x[-1], _EMBED)


def projection_inputs(ctx: Ctx, *heads: np.ndarray | None) -> None:
    """The width read by the projections that made these head labels (q, k, v) stays unless
    `prune_embed`: found through the DepGraph (the other dimension of each producing weight),
    so decomposed attention (torch.export graphs, Hugging Face models) honours the option too."""
    if ctx.options.prune_embed:
        return
    dg = ctx.dg
    for arr in heads:
        atoms = arr[arr >= 0] if arr is not None else np.zeros(0, dtype=np.int64)
        for i in np.unique(dg.space_of(atoms)).tolist():
            sp = dg.spaces[i]
            other = dg.by_key.get((sp.name, 1 - sp.dim)) if sp.dim in (0, 1) else None
            if other is not None:
                ctx.freeze(dg.spaces[other].atoms, _EMBED)


def fused_attention(ctx: Ctx, *, qkv: str = "qkv", proj: str = "proj", heads_attr: str = "num_heads",
                    per_head: tuple[tuple[str, int], ...] = (), fixed_scale: bool = False,
                    biases: tuple[str, str, str] | None = None) -> Labels:
    """An attention module with fused q/k/v and output Linears (timm's `Attention` and
    `WindowAttention`, torchvision's Swin and MaxViT attention), named `qkv` and `proj`.

    `per_head` names tensor dimensions indexed by head (a relative position bias table);
    `fixed_scale`: the attention scale does not follow the head width (see `head_units`);
    `biases`: separate q, k and v bias tensors instead of `qkv.bias` (BEiT).
    """
    m, x = ctx.module, ctx.lab(ctx.arg(0, "x"))
    h = getattr(m, heads_attr)
    d = ctx.tensor(f"{qkv}.weight").shape[0] // (3 * h)
    embed(ctx, x)
    rows = ctx.param(f"{qkv}.weight", 0, active=True)
    ctx.bind(f"{qkv}.weight", 1, x[-1])
    ctx.bind(f"{qkv}.bias", 0, rows)
    for name, part in zip(biases or (), rows.reshape(3, -1) if rows is not None else ()):
        ctx.bind(name, 0, part)
    heads, dims = head_units(ctx, rows, 3, h, d, fixed_scale=fixed_scale)
    for attr, dim in (("gate.weight", 0), ("gate.bias", 0), ("norm.weight", 0), ("norm.bias", 0)):
        tie(ctx, attr, dim, heads, dims, h, d)
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
    return x.with_dim(-1, out_projection(ctx, proj, heads, dims, h, d, heads_attr=heads_attr))


def out_projection(ctx: Ctx, proj: str, heads: np.ndarray | None, dims: np.ndarray | None,
                   n_heads: int, head_dim: int, *, heads_attr: str = "num_heads") -> np.ndarray | None:
    """The output Linear `proj`: its columns follow the heads (or head dims), its rows are a
    new space (returned); the head count or width the layer's `forward` reads is tracked."""
    tie(ctx, f"{proj}.weight", 1, heads, dims, n_heads, head_dim)
    if heads is not None:
        ctx.track(heads_attr, heads, n_heads)
    if dims is not None:
        ctx.track("head_dim", dims, head_dim)
    out = ctx.param(f"{proj}.weight", 0, active=True)
    ctx.bind(f"{proj}.bias", 0, out)
    return out


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
