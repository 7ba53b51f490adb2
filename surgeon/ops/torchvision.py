"""torchvision: its attention layers (Swin V1/V2, MaxViT), `FrozenBatchNorm2d` (per channel,
as BatchNorm), the squeeze-excitation block (one call: a third fewer graph nodes on
EfficientNet, MobileNet-V3 and RegNet-Y) and the ops fx keeps opaque.

A head takes its q/k/v rows, output-projection columns and per-head tables with it: Swin's
`relative_position_bias_table` column, Swin V2's `logit_scale` entry and continuous position
bias output row, MaxViT's relative position bias column. These layers derive the head width
from their input width, so a layer whose heads no longer fill that width is switched to its
`surgeon.layers.vision` subclass. Imported only when torchvision is installed.
"""
from __future__ import annotations

import numpy as np
from torch import nn
from torchvision.models.maxvit import PartitionAttentionLayer, RelativePositionalMultiHeadAttention
from torchvision.models.swin_transformer import (
    ShiftedWindowAttention, ShiftedWindowAttentionV2, _patch_merging_pad,
)
from torchvision.models.vision_transformer import EncoderBlock
from torchvision.ops.misc import FrozenBatchNorm2d, SqueezeExcitation
from torchvision.ops.stochastic_depth import StochasticDepth, stochastic_depth

from ..core.labels import Labels
from ..layers.vision import (
    SlimRelativePositionalMultiHeadAttention, SlimShiftedWindowAttention, SlimShiftedWindowAttentionV2,
)
from .attention import fused_attention
from .context import Ctx
from .excite import plain_parts, squeeze_excite
from .registry import register, resizer
from .torch.norm import PER_CHANNEL

__all__ = ["swin_attention", "swin_v2_attention", "maxvit_attention", "frozen_batch_norm", "squeeze_excitation", "per_sample",
           "patch_merging_pad"]

_SLIM = {
    ShiftedWindowAttention: SlimShiftedWindowAttention,
    ShiftedWindowAttentionV2: SlimShiftedWindowAttentionV2,
    RelativePositionalMultiHeadAttention: SlimRelativePositionalMultiHeadAttention,
}


def _switch(m: nn.Module, qkv: nn.Linear) -> None:
    """Use the width-agnostic subclass once the attention width differs from the input width."""
    if qkv.weight.shape[0] != 3 * qkv.weight.shape[1] and type(m) in _SLIM:
        m.__class__ = _SLIM[type(m)]


@register(ShiftedWindowAttention, SlimShiftedWindowAttention)
def swin_attention(ctx: Ctx) -> Labels:
    """Swin V1: the scale follows the head width (narrower heads are inexact)."""
    return fused_attention(ctx, per_head=(("relative_position_bias_table", 1),))


@register(ShiftedWindowAttentionV2, SlimShiftedWindowAttentionV2)
def swin_v2_attention(ctx: Ctx) -> Labels:
    """Swin V2: cosine attention with a learned per-head scale, so narrower heads are exact."""
    return fused_attention(ctx, per_head=(("cpb_mlp.2.weight", 0), ("logit_scale", 0)), fixed_scale=True)


@register(RelativePositionalMultiHeadAttention, SlimRelativePositionalMultiHeadAttention)
def maxvit_attention(ctx: Ctx) -> Labels:
    """MaxViT: the scale is fixed by the input width at construction, so narrower heads are exact."""
    return fused_attention(ctx, qkv="to_qkv", proj="merge", heads_attr="n_heads",
                           per_head=(("relative_position_bias_table", 1),), fixed_scale=True)


@resizer(ShiftedWindowAttention)
def resize_swin(m: ShiftedWindowAttention, sizes: dict) -> None:
    m.num_heads = sizes.get("num_heads", m.num_heads)
    _switch(m, m.qkv)


@resizer(RelativePositionalMultiHeadAttention)
def resize_maxvit(m: RelativePositionalMultiHeadAttention, sizes: dict) -> None:
    m.n_heads = sizes.get("n_heads", m.n_heads)
    m.head_dim = m.to_qkv.weight.shape[0] // (3 * m.n_heads)
    _switch(m, m.to_qkv)


@resizer(EncoderBlock)
def resize_encoder_block(m: EncoderBlock, sizes: dict) -> None:
    """ViT's block keeps a copy of its attention's head count."""
    m.num_heads = m.self_attention.num_heads


@resizer(PartitionAttentionLayer)
def resize_partition_layer(m: PartitionAttentionLayer, sizes: dict) -> None:
    """MaxViT's partition layer keeps copies of its attention's head count and width."""
    attn = next(c for c in m.modules() if isinstance(c, RelativePositionalMultiHeadAttention))
    m.n_heads, m.head_dim = attn.n_heads, attn.head_dim

@register(FrozenBatchNorm2d)
def frozen_batch_norm(ctx: Ctx) -> Labels:
    """Per-channel buffers follow channel dimension 1. (Registered, it stays one call: traced
    through, fx would fold its buffers into constants, and its channels would be kept.)"""
    x = ctx.lab(ctx.arg(0, "x"))
    for attr in PER_CHANNEL:
        ctx.bind(attr, 0, x[1])
    return x


def _plain_squeeze(m: SqueezeExcitation) -> bool:
    """The block as torchvision builds it (its own `_scale`, a global average pool, ungrouped
    1×1 convs, elementwise activations); any other is traced through, op by op."""
    return (type(m)._scale is SqueezeExcitation._scale
            and type(m.avgpool) is nn.AdaptiveAvgPool2d and m.avgpool.output_size in (1, (1, 1))
            and plain_parts((m.fc1, m.fc2), (m.activation, m.scale_activation)))


@register(SqueezeExcitation, when=_plain_squeeze)
def squeeze_excitation(ctx: Ctx) -> Labels:
    """torchvision's SE block (EfficientNet, MobileNet-V3, RegNet-Y) as one call (`ops.excite`)."""
    return squeeze_excite(ctx, "input", "fc1", "fc2")


@register(stochastic_depth, StochasticDepth)
def per_sample(ctx: Ctx) -> Labels:
    """`stochastic_depth(x, p, mode, training)` scales whole samples: channels pass through.
    The module is kept as one call, so models reading `training` only there (EfficientNet,
    ConvNeXt) are traced once."""
    return ctx.lab(ctx.arg(0, "input"))


@register(_patch_merging_pad)
def patch_merging_pad(ctx: Ctx) -> Labels:
    """Swin's patch merging gathers 2×2 neighbours into the channels: [..., H/2, W/2, 4·C] holds
    channel c at c, C + c, 2C + c and 3C + c (the next Linear's columns follow)."""
    x = ctx.lab(ctx.arg(0, "x"))
    ctx.freeze(Labels(x[-3:-1]), "patch merging subsamples this dimension")
    return Labels([*x[:-3], None, None, None if x[-1] is None else np.tile(x[-1], 4)])
