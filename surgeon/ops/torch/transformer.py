"""`nn.Transformer*` modules are traced through (`surgeon.layers.transformer`), so their
attention, feed-forward and norms meet their own handlers. Once an encoder layer's attention is
narrower than `d_model`, the fused fast path cannot run it: it switches to the composed path."""
from __future__ import annotations

from torch import nn

from ...layers import SlimMultiheadAttention
from ...layers.transformer import SlimTransformerEncoderLayer
from ..registry import resizer

__all__ = ["resize_encoder_layer", "resize_transformer"]


@resizer(nn.TransformerEncoderLayer)
def resize_encoder_layer(m: nn.TransformerEncoderLayer, sizes: dict) -> None:
    """The composed path once the attention no longer fills `d_model`."""
    if type(m.self_attn) is SlimMultiheadAttention and type(m) is nn.TransformerEncoderLayer:
        m.__class__ = SlimTransformerEncoderLayer


@resizer(nn.Transformer)
def resize_transformer(m: nn.Transformer, sizes: dict) -> None:
    """`nn.Transformer.forward` checks its inputs' width against `d_model`."""
    m.d_model = m.encoder.layers[0].self_attn.embed_dim
