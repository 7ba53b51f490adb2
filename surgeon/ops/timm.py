"""timm: `Attention` (ViT, DeiT, …), Swin's `WindowAttention`, BEiT's attention and CaiT /
XCiT's `ClassAttn` lose whole heads.

The first three fuse q/k/v into one Linear `qkv` and project with `proj`; relative position
bias tables have one column per head, which leaves with its head. `ClassAttn` has separate
`q`, `k`, `v` Linears (the class token queries every token). BEiT's attention and `ClassAttn`
read their head width from the input width, so once heads leave they switch to their
`surgeon.layers.timm` subclass. The squeeze-excitation blocks (`SqueezeExcite`, `SEModule`),
`BatchNormAct2d` and timm's own elementwise activations are one call each. Loaded once timm is
imported.
"""
from __future__ import annotations

import numpy as np
from timm.layers import Attention
from timm.layers import activations as timm_activations
from timm.layers.norm_act import BatchNormAct2d
from timm.layers.squeeze_excite import SEModule
from timm.models.beit import Attention as BeitAttention
from timm.models.cait import ClassAttn
from timm.models.swin_transformer import WindowAttention
from torch import nn

from ..core.labels import Labels
from ..layers.timm import SlimBeitAttention, SlimClassAttn
from .attention import embed, fused_attention, head_units, out_projection, resize_heads
from .context import Ctx
from .excite import plain_parts, squeeze_excite
from .registry import register, resizer
from .torch.norm import batch_norm
from .torch.pointwise import pointwise

try:  # a private module of timm's (EfficientNet / MobileNet blocks): its SE block moves with it
    from timm.models._efficientnet_blocks import SqueezeExcite
except ImportError:  # a timm without it: the block is traced through
    SqueezeExcite = None

__all__ = ["attention", "window_attention", "beit_attention", "class_attention", "squeeze_excite_block",
           "se_module", "batch_norm_act"]


@register(Attention)
def attention(ctx: Ctx) -> Labels:
    """q/k/v rows, `proj` columns (and q/k norms, a gate) follow their head."""
    return fused_attention(ctx)


@register(WindowAttention)
def window_attention(ctx: Ctx) -> Labels:
    """As `attention`, and the relative position bias table's column of each head."""
    return fused_attention(ctx, per_head=(("relative_position_bias_table", 1),))


resizer(Attention, WindowAttention)(resize_heads)


@register(BeitAttention, SlimBeitAttention)
def beit_attention(ctx: Ctx) -> Labels:
    """BEiT: fused `qkv` weight, separate q/k/v biases, a per-head relative position table."""
    return fused_attention(ctx, per_head=(("relative_position_bias_table", 1),),
                           biases=("q_bias", "k_bias", "v_bias"), fixed_scale=True)


@register(ClassAttn, SlimClassAttn)
def class_attention(ctx: Ctx) -> Labels:
    """CaiT / XCiT class attention: a head is its rows of `q`, `k` and `v` and its `proj`
    columns; the scale is fixed at construction, so heads leave exactly."""
    m, x = ctx.module, ctx.lab(ctx.arg(0, "x"))
    h, d = m.num_heads, m.q.weight.shape[0] // m.num_heads
    embed(ctx, x)
    rows = []
    for p in ("q", "k", "v"):
        rows.append(ctx.param(f"{p}.weight", 0, active=True))
        ctx.bind(f"{p}.weight", 1, x[-1])
        ctx.bind(f"{p}.bias", 0, rows[-1])
    heads, dims = head_units(ctx, np.concatenate(rows), 3, h, d, fixed_scale=True)
    return x.with_dim(-1, out_projection(ctx, "proj", heads, dims, h, d))


def _switch(m: nn.Module, width: int, slim: type) -> None:
    """The width-agnostic subclass once the attention no longer fills the embedding width."""
    if width != m.proj.weight.shape[0] and type(m) is not slim:
        m.__class__ = slim


@resizer(BeitAttention)
def resize_beit(m: BeitAttention, sizes: dict) -> None:
    resize_heads(m, sizes)
    _switch(m, m.qkv.weight.shape[0] // 3, SlimBeitAttention)


@resizer(ClassAttn)
def resize_class_attention(m: ClassAttn, sizes: dict) -> None:
    m.num_heads = sizes.get("num_heads", m.num_heads)
    if "head_dim" in sizes:
        m.scale = (m.q.weight.shape[0] // m.num_heads) ** -0.5
    _switch(m, m.q.weight.shape[0], SlimClassAttn)


@register(*[c for c in (SqueezeExcite,) if c is not None],
          when=lambda m: plain_parts((m.conv_reduce, m.conv_expand), (m.act1, m.gate)))
def squeeze_excite_block(ctx: Ctx) -> Labels:
    """The EfficientNet / MobileNet family's SE block as one call (`ops.excite`)."""
    return squeeze_excite(ctx, "x", "conv_reduce", "conv_expand")


def _plain_se_module(m: SEModule) -> bool:
    """No max-pool branch; no norm, or a BatchNorm2d (per channel) between the convs."""
    return (not m.add_maxpool and type(m.bn) in (nn.Identity, nn.BatchNorm2d)
            and plain_parts((m.fc1, m.fc2), (m.act, m.gate)))


@register(SEModule, when=_plain_se_module)
def se_module(ctx: Ctx) -> Labels:
    """The SE-Net block (ResNet-D/SE variants, RegNet-Y) as one call (`ops.excite`)."""
    return squeeze_excite(ctx, "x", "fc1", "fc2", norm="bn" if isinstance(ctx.module.bn, nn.BatchNorm2d) else None)


register(*(getattr(timm_activations, n) for n in (
    "GELU", "GELUTanh", "HardMish", "HardSigmoid", "HardSwish", "Mish", "QuickGELU", "Sigmoid", "Swish", "Tanh",
) if hasattr(timm_activations, n)))(pointwise)  # timm's own elementwise activations: one call each


@register(BatchNormAct2d, when=lambda m: plain_parts((), (m.drop, m.act)))
def batch_norm_act(ctx: Ctx) -> Labels:
    """BatchNorm, dropout and an elementwise activation (timm's CNNs) as one call: per channel,
    as `nn.BatchNorm2d`. Traced through, it costs several nodes, and since its `forward` reads
    `self.training` the model would be traced in train mode too."""
    return batch_norm(ctx)
