"""Elementwise ops: activations, arithmetic with broadcasting, dropout, casts.

Every aligned index of every tensor input is coupled (a residual `add` makes its two inputs one
space; an SE gate `[N, C, 1, 1]` shares C with the feature map it scales).
"""
from __future__ import annotations

import operator

import torch
import torch.nn.functional as F
from torch import nn

from ...core.labels import Labels, empty
from ..context import Ctx
from ..registry import register

__all__ = ["pointwise", "first_arg", "new_tensor"]

_MODULES = (
    nn.ReLU, nn.ReLU6, nn.GELU, nn.SiLU, nn.Sigmoid, nn.Tanh, nn.Hardswish, nn.Hardsigmoid,
    nn.Hardtanh, nn.LeakyReLU, nn.ELU, nn.CELU, nn.SELU, nn.Mish, nn.Softplus, nn.Softsign,
    nn.Tanhshrink, nn.LogSigmoid, nn.Identity, nn.Dropout, nn.Dropout1d, nn.Dropout2d,
    nn.Dropout3d, nn.AlphaDropout, nn.FeatureAlphaDropout,
)
_FUNCTIONS = (
    operator.add, operator.sub, operator.mul, operator.truediv, operator.neg, operator.pow,
    operator.iadd, operator.isub, operator.imul, operator.itruediv,
    torch.add, torch.sub, torch.mul, torch.div, torch.neg, torch.pow, torch.where,
    torch.maximum, torch.minimum, torch.clamp, torch.clip, torch.abs, torch.exp, torch.log,
    torch.sqrt, torch.rsqrt, torch.sigmoid, torch.tanh, torch.relu, torch.erf, torch.sin,
    torch.cos, torch.reciprocal, torch.square, torch.sign,
    F.relu, F.relu6, F.gelu, F.silu, F.sigmoid, F.tanh, F.hardswish, F.hardsigmoid,
    F.hardtanh, F.leaky_relu, F.elu, F.celu, F.selu, F.mish, F.softplus, F.dropout,
    F.dropout1d, F.dropout2d, F.dropout3d, F.alpha_dropout,
    torch.zeros_like, torch.ones_like, torch.empty_like, torch.full_like, torch.rand_like,
    torch.randn_like, torch.clone, torch.nn.init.trunc_normal_,
)
_METHODS = (
    "add", "sub", "mul", "div", "neg", "pow", "add_", "sub_", "mul_", "div_", "relu", "relu_",
    "sigmoid", "sigmoid_", "tanh", "exp", "log", "sqrt", "rsqrt", "abs", "clamp", "clamp_",
    "clip", "masked_fill", "masked_fill_", "square", "reciprocal", "sign",
    "zero_", "fill_", "requires_grad_", "maximum", "minimum", "where", "erf", "sin", "cos",
)


@register(*_MODULES, *_FUNCTIONS, *_METHODS)
def pointwise(ctx: Ctx) -> Labels:
    """Output index i ← input index i of every (broadcast) tensor argument."""
    return ctx.broadcast_merge(ctx.tensor_args())


@register("contiguous", "clone", "detach", "float", "half", "double", "bfloat16", "to", "type",
          "type_as", "cpu", "cuda")
def first_arg(ctx: Ctx) -> Labels:
    """Casts and copies: the output is the first argument (a tensor argument sets only dtype)."""
    return ctx.lab(ctx.node.args[0])


@register("new_empty", "new_zeros", "new_ones", "new_full", "new_tensor")
def new_tensor(ctx: Ctx) -> Labels:
    """`x.new_*(shape)` takes only dtype and device from `x` (DropPath's random mask)."""
    return empty(ctx.node.meta["tensor_meta"])
