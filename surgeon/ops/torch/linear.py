"""Linear layers and embeddings: the last dimension is the feature space."""
from __future__ import annotations

import torch.nn.functional as F
from torch import nn

from ...core.labels import Labels
from ..context import Ctx
from ..registry import register, resizer

__all__ = ["linear", "functional_linear", "embedding", "resize_linear", "resize_embedding"]


@register(nn.Linear)
def linear(ctx: Ctx) -> Labels:
    """Out features are a new space; in features bind to weight dim 1 (one column each)."""
    x = ctx.lab(ctx.arg(0, "input"))
    out = ctx.param("weight", 0, active=True)
    ctx.bind("bias", 0, out)
    ctx.bind("weight", 1, x[-1])
    return x.with_dim(-1, out)


@register(F.linear)
def functional_linear(ctx: Ctx) -> Labels:
    """`F.linear(x, weight, bias)` with a weight tensor from the graph."""
    x, w, b = (ctx.lab(ctx.arg(i, n)) for i, n in ((0, "input"), (1, "weight"), (2, "bias")))
    out = w[0]
    ctx.dg.activate(out)
    if b is not None:
        ctx.merge([b[0], out])
    ctx.merge([w[1], x[-1]])
    return x.with_dim(-1, out)


@register(nn.Embedding)
def embedding(ctx: Ctx) -> Labels:
    """The embedding dimension is a new space."""
    ids = ctx.lab(ctx.arg(0, "input"))
    ctx.freeze(ids, "embedding indices")
    return Labels([None] * (len(ids) + 1)).with_dim(-1, ctx.param("weight", 1, active=True))


@resizer(nn.Linear)
def resize_linear(m: nn.Linear, sizes: dict) -> None:
    m.out_features, m.in_features = m.weight.shape


@resizer(nn.Embedding)
def resize_embedding(m: nn.Embedding, sizes: dict) -> None:
    m.embedding_dim = m.weight.shape[1]
