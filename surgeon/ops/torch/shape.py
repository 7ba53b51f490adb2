"""Shape ops: reshape/view/flatten, permute/transpose, expand/repeat, channel shuffle.

A reshape is split into blocks of input and output dimensions with equal products. A block that
merges dimensions (flatten before a Linear) gives every channel the H·W features it owns. A
block that splits a labelled dimension (channel shuffle's `view(B, g, C/g, H, W)`, a head split)
keeps the literal sizes of the call fixed: indices are coupled across those dimensions, so the
one computed size shrinks and every literal stays true. Literal sizes on a labelled dimension
with nothing computed freeze it (the forward hard-codes the width).
"""
from __future__ import annotations

import operator

import numpy as np
import torch
from torch import fx, nn

from ...errors import HandlerError
from ...core.labels import Labels, SizeOf
from ..attention import projection_inputs
from ..context import Ctx, is_head_count
from ..registry import register

__all__ = ["size_value", "reshape_labels", "view", "flatten", "unflatten", "permute", "transpose",
           "expand", "expand_as", "repeat", "channel_shuffle"]


def _blocks(a: tuple[int, ...], b: tuple[int, ...]) -> list[tuple[list[int], list[int]]]:
    """Group input dims `a` and output dims `b` into blocks of equal element count."""
    i = j = 0
    out: list[tuple[list[int], list[int]]] = []
    while i < len(a) or j < len(b):
        if i < len(a) and a[i] == 1:
            out.append(([i], []))
            i += 1
        elif j < len(b) and b[j] == 1:
            out.append(([], [j]))
            j += 1
        elif i < len(a) and j < len(b):
            ib, jb, pa, pb = [i], [j], a[i], b[j]
            i, j = i + 1, j + 1
            while pa != pb:
                if pa < pb and i < len(a):
                    pa, i = pa * a[i], i + 1
                    ib.append(i - 1)
                elif pb < pa and j < len(b):
                    pb, j = pb * b[j], j + 1
                    jb.append(j - 1)
                else:
                    raise HandlerError(f"cannot match reshape {a} -> {b}")
            out.append((ib, jb))
        else:
            raise HandlerError(f"cannot match reshape {a} -> {b}")
    return out


def reshape_labels(ctx: Ctx, x: Labels, a: tuple[int, ...], b: tuple[int, ...],
                   fixed: list[bool], attrs: dict[int, tuple[str, str]] | None = None) -> Labels:
    """Labels after reshaping shape `a` to `b`; `fixed[j]`: output dim j has a literal size.

    `attrs[j]`: that literal is a module attribute (path, name). A block whose sizes are all
    literal may shrink through the one such dimension; the attribute is then resized with it.
    """
    attrs = attrs or {}
    out: list[np.ndarray | None] = [None] * len(b)
    for ib, jb in _blocks(a, b):
        labelled = [i for i in ib if x[i] is not None]
        if not labelled:
            continue
        if len(labelled) > 1 or not jb:
            ctx.freeze(Labels([x[i] for i in labelled]), "reshape mixes two labelled dimensions")
            continue
        k = labelled[0]
        view = [-1 if i == k else 1 for i in ib]
        grid = np.broadcast_to(x[k].reshape(view), [a[i] for i in ib]).reshape([b[j] for j in jb])
        big = [p for p, j in enumerate(jb) if b[j] > 1]
        baked = big if ctx.baked and len(big) == 1 else []  # export: one literal, likely x.size()
        heads = [p for p in big if jb[p] in attrs and is_head_count(attrs[jb[p]][1])]
        # a head split (`view(b, n, 3, self.num_heads, -1)`): whole heads leave, widths stay
        free = (heads if len(big) > 1 and len(heads) == 1 else []) or [p for p in big if not fixed[jb[p]]] \
            or baked or [p for p in big if jb[p] in attrs]
        if len(free) != 1:
            ctx.freeze(x[k], "reshape fixes the size of a labelled dimension with a literal")
            continue
        f = free[0]
        head_split = len(big) > 1 and heads == [f]
        if head_split:
            projection_inputs(ctx, x[k])  # the width the attention reads stays unless prune_embed
        if head_split and not ctx.options.prune_heads:
            ctx.freeze(x[k], "prune_heads=False: a head split keeps its heads")
            continue
        cols = np.moveaxis(grid, f, 0).reshape(b[jb[f]], -1)
        out[jb[f]] = ctx.merge(list(cols.T)) if cols.shape[1] > 1 else cols[:, 0]
        if fixed[jb[f]] and not baked:
            path, name = attrs[jb[f]]
            ctx.track(name, out[jb[f]], b[jb[f]], module=path)
        elif ctx.baked and not fixed[jb[f]] and len(big) > 1:  # a head split: `view(…, -1, head_dim)`
            for path, name in ctx.head_count_attrs(b[jb[f]]):
                ctx.track(name, out[jb[f]], b[jb[f]], module=path)
    return Labels(out)


def _literal(v: object) -> bool:
    return isinstance(v, int) and v != -1


def size_value(ctx: Ctx) -> object:
    """Sizes read in `forward` (`x.shape`, `x.size(d)`, indexing them) keep their labels."""
    node, target = ctx.node, ctx.node.target
    src = ctx.lab(node.args[0]) if node.args else None
    if isinstance(src, Labels) and (target == "size" or (target is getattr and node.args[1] == "shape")):
        sizes = tuple(SizeOf(a) for a in src)
        dim = ctx.arg(1, "dim") if target == "size" else None
        return sizes if dim is None else sizes[dim]
    if target is operator.getitem and isinstance(src, tuple) and src and isinstance(src[0], SizeOf):
        return src[node.args[1]]
    return None


def _match_sizes(ctx: Ctx, out: Labels, sizes: object) -> Labels:
    """A dimension sized from another tensor's dimension must keep as many indices as it."""
    values = ctx.lab(sizes)
    if not isinstance(values, tuple) or len(values) != len(out):
        return out
    dims = list(out)
    for j, src in enumerate(values):
        if not isinstance(src, SizeOf):
            continue
        if dims[j] is None or src.labels is None:
            dims[j] = ctx.merge([dims[j], src.labels])
        else:
            ctx.dg.same_count(dims[j], src.labels)
    return Labels(dims)


@register("view", "reshape", torch.reshape)
def view(ctx: Ctx) -> Labels:
    """`x.view(*shape)`, `x.reshape(shape)`, `torch.reshape(x, shape)`."""
    args = ctx.node.args[1:] or (ctx.node.kwargs.get("shape"),)
    if len(args) == 1 and isinstance(args[0], torch.dtype):
        return ctx.lab(ctx.arg(0))
    sizes = args[0] if len(args) == 1 and isinstance(args[0], (list, tuple, fx.Node)) else args
    fixed = [_literal(s) for s in sizes] if not isinstance(sizes, fx.Node) else []
    if len(fixed) != len(ctx.out_shape):
        fixed = [False] * len(ctx.out_shape)
    literals = [(j, s) for j, s in enumerate(sizes if not isinstance(sizes, fx.Node) else ())
                if j < len(fixed) and fixed[j] and s > 1]
    attrs = {j: found for j, s in literals if (found := ctx.count_attr(s))}
    x = ctx.node.args[0]
    out = reshape_labels(ctx, ctx.lab(x), ctx.shape(x), ctx.out_shape, fixed, attrs)
    return _match_sizes(ctx, out, sizes)


@register("flatten", torch.flatten, nn.Flatten, "squeeze", torch.squeeze, "unsqueeze",
          torch.unsqueeze, "view_as", "reshape_as")
def flatten(ctx: Ctx) -> Labels:
    """Reshapes whose output sizes are all computed from the input."""
    x = ctx.node.args[0]
    return reshape_labels(ctx, ctx.lab(x), ctx.shape(x), ctx.out_shape, [False] * len(ctx.out_shape))


@register("unflatten", torch.unflatten, nn.Unflatten)
def unflatten(ctx: Ctx) -> Labels:
    """`unflatten(dim, sizes)`: literal sizes stay fixed."""
    x = ctx.node.args[0]
    if ctx.module is not None:
        dim, sizes = ctx.module.dim, ctx.module.unflattened_size
    else:
        dim, sizes = ctx.arg(1, "dim"), ctx.arg(2, "sizes")
    out_shape = ctx.out_shape
    dim %= len(ctx.shape(x))
    fixed = [False] * len(out_shape)
    for k, s in enumerate(sizes):
        fixed[dim + k] = _literal(s)
    return reshape_labels(ctx, ctx.lab(x), ctx.shape(x), out_shape, fixed)


@register("permute", torch.permute)
def permute(ctx: Ctx) -> Labels:
    """Reorder the per-dimension labels."""
    x = ctx.lab(ctx.node.args[0])
    dims = ctx.node.args[1:] if ctx.node.op == "call_method" else (ctx.arg(1, "dims"),)
    dims = dims[0] if len(dims) == 1 and isinstance(dims[0], (list, tuple)) else dims
    return Labels([x[d] for d in dims])


@register("transpose", torch.transpose, "swapaxes", torch.swapaxes, "t", torch.t, "mT",
          "movedim", torch.movedim)
def transpose(ctx: Ctx) -> Labels:
    """Swap (or move) two dimensions."""
    x = list(ctx.lab(ctx.node.args[0]))
    name = ctx.op_name
    if name in ("t", "mT"):
        d0, d1 = -2, -1
    else:
        d0, d1 = ctx.arg(1, "dim0"), ctx.arg(2, "dim1")
    if name == "movedim":
        x.insert(d1 % len(x), x.pop(d0))
    else:
        x[d0], x[d1] = x[d1], x[d0]
    return Labels(x)


@register("expand")
def expand(ctx: Ctx) -> Labels:
    """Broadcast size-1 dims; a literal size on a labelled dimension freezes it."""
    x, shape = ctx.lab(ctx.node.args[0]), ctx.shape(ctx.node.args[0])
    sizes = ctx.node.args[1:]
    sizes = sizes[0] if len(sizes) == 1 and isinstance(sizes[0], (list, tuple)) else sizes
    out_shape, lead = ctx.out_shape, len(ctx.out_shape) - len(shape)
    dims: list[np.ndarray | None] = [None] * lead
    for d, lab in enumerate(x):
        size = sizes[lead + d]
        if lab is not None and _literal(size) and not (ctx.baked and size == shape[d]):
            ctx.freeze(lab, "expand with a literal size")
            lab = None
        dims.append(lab if shape[d] == out_shape[lead + d] else None)
    return _match_sizes(ctx, Labels(dims), sizes)


@register("expand_as", torch.broadcast_to)
def expand_as(ctx: Ctx) -> Labels:
    """Broadcast to another tensor's shape: couples like an elementwise op."""
    return ctx.broadcast_merge(ctx.tensor_args())


@register("repeat", "tile", torch.tile)
def repeat(ctx: Ctx) -> Labels:
    """Repeating a labelled dimension would duplicate its indices: it is frozen."""
    x = ctx.lab(ctx.node.args[0])
    lead = len(ctx.out_shape) - len(x)
    shape = ctx.shape(ctx.node.args[0])
    dims: list[np.ndarray | None] = [None] * lead
    for d, lab in enumerate(x):
        if lab is not None and ctx.out_shape[lead + d] != shape[d]:
            ctx.freeze(lab, "a labelled dimension is repeated")
            lab = None
        dims.append(lab)
    return Labels(dims)


@register(nn.ChannelShuffle, torch.channel_shuffle, nn.functional.channel_shuffle,
          torch.native_channel_shuffle)
def channel_shuffle(ctx: Ctx) -> Labels:
    """Couple index j of every group; output position j·g+k takes group k's index j."""
    x = ctx.lab(ctx.arg(0, "input"))
    g = ctx.module.groups if ctx.module is not None else ctx.arg(1, "groups")
    if x[1] is None:
        return x
    rows = x[1].reshape(g, -1)
    return x.with_dim(1, np.repeat(ctx.merge(list(rows)), g))
