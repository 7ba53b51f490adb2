"""Concatenation, stacking, splitting and indexing.

`cat` along channels gives each input an offset slice of the output space; equal `chunk`s
(ShuffleNet) must keep equal counts (`DepGraph.balance`), not the same indices; literal split
sizes, integer indices or partial slices on a labelled dimension freeze it (the forward fixes
those numbers).
"""
from __future__ import annotations

import operator

import numpy as np
import torch
from torch import fx

from ...core.labels import Labels, empty
from ..context import Ctx
from ..registry import register

__all__ = ["cat", "stack", "split", "getitem"]


def _tensors(ctx: Ctx) -> tuple[list[Labels], list[tuple[int, ...]]]:
    seq = ctx.arg(0, "tensors")
    return [ctx.lab(t) for t in seq], [ctx.shape(t) for t in seq]


@register(torch.cat, torch.concat, torch.concatenate)
def cat(ctx: Ctx) -> Labels:
    """Concatenate: the cat dimension's labels are the inputs' labels end to end."""
    labs, shapes = _tensors(ctx)
    nd = len(ctx.out_shape)
    d = ctx.arg(1, "dim", 0) % nd
    dims: list[np.ndarray | None] = []
    for k in range(nd):
        if k == d:
            parts = [lab[d] if lab[d] is not None else np.full(s[d], -1) for lab, s in zip(labs, shapes)]
            joined = np.concatenate(parts)
            dims.append(joined if (joined >= 0).any() else None)
        else:
            dims.append(ctx.merge([lab[k] for lab in labs]) if ctx.out_shape[k] > 1 else None)
    return Labels(dims)


@register(torch.stack)
def stack(ctx: Ctx) -> Labels:
    """Stack: a new unlabelled dimension; every other dimension is coupled across inputs."""
    labs, _ = _tensors(ctx)
    d = ctx.arg(1, "dim", 0) % len(ctx.out_shape)
    dims = [ctx.merge([lab[k] for lab in labs]) for k in range(len(labs[0]))]
    dims.insert(d, None)
    return Labels(dims)


@register("split", torch.split, "chunk", torch.chunk, "unbind", torch.unbind,
          "tensor_split", torch.tensor_split)
def split(ctx: Ctx) -> tuple:
    """Pieces along a dimension, each with its own indices' labels. Equal pieces from a count
    (`chunk(n)`; torch.export's `split` of a size it computed) must keep equal counts, not the
    same indices; literal piece sizes on a labelled dimension freeze it."""
    x = ctx.lab(ctx.node.args[0])
    name = ctx.op_name
    how = ctx.arg(1, "split_size_or_sections" if name == "split" else "chunks")
    d = ctx.arg(1 if name == "unbind" else 2, "dim", 0) % len(x)
    pieces = ctx.node.meta["tensor_meta"]
    sizes = [p.shape[d] if name != "unbind" else 1 for p in pieces]
    lab = x[d]
    rows: list[np.ndarray | None] = [None] * len(sizes)
    if lab is not None:
        by_count = (name in ("chunk", "tensor_split") or ctx.baked and name == "split") and isinstance(how, int)
        if by_count and len(set(sizes)) == 1 and len(sizes) > 1:
            rows = list(lab.reshape(len(sizes), -1))
            ctx.dg.balance(np.stack(rows))
        elif by_count and len(sizes) == 1:
            rows = [lab]
        else:
            ctx.freeze(lab, f"{name} with literal sizes on a labelled dimension")
    out = []
    for row in rows:
        dims = list(x)
        if name == "unbind":
            dims.pop(d)
        else:
            dims[d] = row
        out.append(Labels(dims))
    return tuple(out)


def _full(s: object) -> bool:
    return isinstance(s, slice) and s.start is None and s.stop is None and s.step is None


@register(operator.getitem)
def getitem(ctx: Ctx) -> object:
    """Pick from a tuple of outputs, or index a tensor."""
    src, idx = ctx.node.args
    value = ctx.lab(src)
    if not isinstance(value, Labels):
        return value[idx] if value is not None else None
    items = idx if isinstance(idx, tuple) else (idx,)
    if any(isinstance(i, (fx.Node, list)) for i in items):
        ctx.freeze(value, "indexed with a tensor or list")
        return empty(ctx.node.meta.get("tensor_meta"))
    used = sum(1 for i in items if i is not None and i is not Ellipsis)
    expanded: list[object] = []
    for i in items:
        expanded.extend([slice(None)] * (len(value) - used) if i is Ellipsis else [i])
    expanded.extend([slice(None)] * (len(value) - sum(1 for i in expanded if i is not None)))
    dims: list[np.ndarray | None] = []
    d = 0
    for i in expanded:
        if i is None:
            dims.append(None)
            continue
        if not _full(i):
            ctx.freeze(value[d], "a labelled dimension is indexed with a literal")
        if isinstance(i, slice):
            dims.append(value[d] if _full(i) else None)
        d += 1
    return Labels(dims)
