"""Per-layer widths before → after: output and input width of every conv / linear / embedding,
and the head count of every attention layer."""
from __future__ import annotations

from typing import Any

import torch
from torch import nn

__all__ = ["layer_widths", "widths"]

_OUT = ("out_channels", "out_features", "embedding_dim")
_IN = ("in_channels", "in_features", "num_embeddings")
_HEADS = ("num_heads", "num_attention_heads", "n_heads", "n_head")


def _int(m: nn.Module, names: tuple[str, ...]) -> int | None:
    return next((v for v in (getattr(m, n, None) for n in names) if type(v) is int), None)


def _heads(m: nn.Module) -> int | None:
    """Query heads: read from the projections of a Hugging Face attention layer, else from
    a `num_heads`-like attribute."""
    if type(m).__module__.startswith("transformers."):
        from ..ops.hf import head_counts  # loaded with transformers, as a Hugging Face model is

        counts = head_counts(m)
        if counts:
            return counts[0]
    return _int(m, _HEADS)


def widths(m: nn.Module) -> dict[str, int]:
    """`out` / `in` widths of a layer with a weight matrix, `heads` of an attention layer; `{}`
    for anything else.

    Example:
        >>> widths(nn.Conv2d(3, 64, 3))
        {'out': 64, 'in': 3}
    """
    found: dict[str, int] = {}
    weight = m._parameters.get("weight")
    if isinstance(weight, torch.Tensor) and weight.dim() >= 2:
        transposed = type(m).__name__ == "Conv1D"  # Hugging Face GPT-2: weight is [in, out]
        found["out"] = _int(m, _OUT) or weight.shape[1 if transposed else 0]
        found["in"] = _int(m, _IN) or weight.shape[0 if transposed else 1]
    heads = _heads(m)
    if heads:
        found["heads"] = heads
    return found


def layer_widths(original: nn.Module, slim: nn.Module) -> list[dict[str, Any]]:
    """One entry per layer in module order: name, type, widths before and after.

    Example:
        >>> layer_widths(model, surgeon.slim(model, 0.5))[0]
        {'name': 'conv1', 'type': 'Conv2d', 'before': {'out': 64, 'in': 3}, 'after': {'out': 32, 'in': 3}}
    """
    after = dict(slim.named_modules())
    rows = []
    for name, m in original.named_modules():
        before = widths(m)
        if before and name in after:
            rows.append({"name": name or "(model)", "type": type(m).__name__, "before": before,
                         "after": widths(after[name])})
    return rows
