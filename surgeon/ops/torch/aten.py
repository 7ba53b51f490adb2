"""ATen ops, as torch.export records them: most take their torch function's handler (same
argument order); thin adapters where the order or the meaning differs (embedding, addmm,
slice / select, the batch-norm variants returning tuples).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from ...core.labels import Labels, empty
from ..context import Ctx
from ..registry import register
from .conv import functional_conv
from .index import cat, split, stack
from .linear import functional_linear
from .matmul import attention, matmul
from .norm import functional_batch_norm, functional_layer_norm, group_norm_function
from .pointwise import first_arg, new_tensor, pointwise
from .reduce import pad, reduction, softmax, spatial_handler
from .shape import expand, flatten, permute, repeat, transpose, unflatten, view

__all__ = ["embedding", "functional_embedding", "addmm", "slice_", "select", "batch_norm_tuple"]

aten = torch.ops.aten

_SAME = {
    functional_linear: ("linear",),
    functional_conv: ("conv1d", "conv2d", "conv3d"),
    view: ("view", "reshape", "_unsafe_view"),
    flatten: ("flatten", "squeeze", "unsqueeze"),
    unflatten: ("unflatten",),
    permute: ("permute",),
    transpose: ("transpose", "t", "movedim", "swapaxes"),
    expand: ("expand",),
    repeat: ("repeat",),
    cat: ("cat", "concat"),
    stack: ("stack",),
    split: ("split", "split_with_sizes", "chunk", "unbind", "tensor_split"),
    matmul: ("matmul", "bmm", "mm"),
    attention: ("scaled_dot_product_attention",),
    softmax: ("softmax", "_softmax", "log_softmax", "_log_softmax"),
    reduction: ("mean", "sum", "amax", "amin", "std", "var", "logsumexp", "prod", "max", "min",
                "argmax", "argmin", "any", "all"),
    pad: ("constant_pad_nd", "pad"),
    functional_layer_norm: ("layer_norm",),
    group_norm_function: ("group_norm",),
    first_arg: ("contiguous", "clone", "detach", "alias", "to", "_to_copy", "type_as",
                "lift_fresh_copy"),
    new_tensor: ("new_empty", "new_zeros", "new_ones", "new_full"),
    pointwise: (
        "add", "add_", "sub", "sub_", "rsub", "mul", "mul_", "div", "div_", "neg", "pow", "exp",
        "log", "sqrt", "rsqrt", "abs", "sign", "square", "reciprocal", "erf", "sin", "cos", "tanh",
        "sigmoid", "relu", "relu_", "gelu", "silu", "silu_", "hardswish", "hardswish_",
        "hardsigmoid", "hardtanh", "hardtanh_", "leaky_relu", "elu", "mish", "softplus",
        "clamp", "clamp_min", "clamp_max", "clip", "where", "maximum", "minimum",
        "masked_fill", "masked_fill_", "dropout", "zeros_like", "ones_like", "empty_like",
        "full_like", "rand_like", "randn_like", "fill_", "zero_",
    ),
}
for _handler, _names in _SAME.items():
    register(*(getattr(aten, n) for n in _names if hasattr(aten, n)))(_handler)

for _k, _names in {2: ("adaptive_avg_pool2d", "avg_pool2d", "max_pool2d", "max_pool2d_with_indices",
                       "upsample_nearest2d", "upsample_bilinear2d"),
                   1: ("adaptive_avg_pool1d", "avg_pool1d", "max_pool1d"),
                   3: ("adaptive_avg_pool3d", "avg_pool3d", "max_pool3d")}.items():
    register(*(getattr(aten, n) for n in _names if hasattr(aten, n)))(spatial_handler(_k))


def _embedding(ctx: Ctx, ids: Labels, w: Labels) -> Labels:
    ctx.freeze(ids, "embedding indices")
    ctx.dg.activate(w[1])
    return Labels([*([None] * len(ids)), w[1]])


@register(aten.embedding)
def embedding(ctx: Ctx) -> Labels:
    """`aten.embedding(weight, ids)`: the embedding dim (weight dim 1) is a space."""
    return _embedding(ctx, ctx.lab(ctx.arg(1)), ctx.lab(ctx.arg(0)))


@register(F.embedding)
def functional_embedding(ctx: Ctx) -> Labels:
    """`F.embedding(ids, weight)`: as `embedding`."""
    return _embedding(ctx, ctx.lab(ctx.arg(0, "input")), ctx.lab(ctx.arg(1, "weight")))


@register(aten.addmm)
def addmm(ctx: Ctx) -> Labels:
    """`addmm(bias, a, b)` = a @ b + bias (a Linear with a transposed weight, HF's `Conv1D`)."""
    bias, a, b = (ctx.lab(ctx.arg(i)) for i in range(3))
    ctx.merge([a[-1], b[0]])
    ctx.dg.activate(b[1])
    out = ctx.merge([b[1], bias[-1]]) if isinstance(bias, Labels) and bias else b[1]
    return Labels([a[0], out])


@register(aten.slice)
def slice_(ctx: Ctx) -> Labels:
    """`x[..., start:end:step]` along one dimension: the piece keeps its indices' labels. Its
    bounds were computed in `forward` (torch.export bakes them; Phi-3 splits its fused q/k/v
    by `config.num_attention_heads · head_dim`, which the rebuild keeps true) — the check
    after surgery runs the real forward."""
    x, shape = ctx.lab(ctx.arg(0)), ctx.shape(ctx.arg(0))
    dim = ctx.arg(1, "dim", 0) % len(x)
    start, end, step = ctx.arg(2, "start"), ctx.arg(3, "end"), ctx.arg(4, "step", 1)
    if x[dim] is None:
        return x
    return x.with_dim(dim, x[dim][slice(start, min(end, shape[dim]) if end is not None else None, step)])


@register(aten.select)
def select(ctx: Ctx) -> Labels:
    """`x.select(dim, i)`: that dimension leaves; a labelled one is frozen."""
    x = ctx.lab(ctx.arg(0))
    dim = ctx.arg(1, "dim") % len(x)
    ctx.freeze(x[dim], "one index of a labelled dimension is taken")
    return Labels([a for d, a in enumerate(x) if d != dim])


@register(aten._native_batch_norm_legit_no_training, aten.native_batch_norm, aten.batch_norm,
          aten._native_batch_norm_legit)
def batch_norm_tuple(ctx: Ctx) -> object:
    """Batch norm as ATen records it: per channel, several outputs (statistics) for some."""
    out = functional_batch_norm(ctx)
    if not ctx.returns_tuple:
        return out
    return (out, *(empty(m) for m in ctx.node.meta["tensor_meta"][1:]))
