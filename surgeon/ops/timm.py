"""timm: `Attention` (ViT, DeiT, …) and Swin's `WindowAttention` lose whole heads.

Both fuse q/k/v into one Linear `qkv` and project with `proj`; Swin's relative position bias
table has one column per head, which leaves with its head. Imported only when timm is installed.
"""
from __future__ import annotations

from timm.layers import Attention
from timm.models.swin_transformer import WindowAttention

from ..core.labels import Labels
from .attention import fused_attention, resize_heads
from .context import Ctx
from .registry import register, resizer

__all__ = ["attention", "window_attention"]


@register(Attention)
def attention(ctx: Ctx) -> Labels:
    """q/k/v rows, `proj` columns (and q/k norms, a gate) follow their head."""
    return fused_attention(ctx)


@register(WindowAttention)
def window_attention(ctx: Ctx) -> Labels:
    """As `attention`, and the relative position bias table's column of each head."""
    return fused_attention(ctx, per_head=(("relative_position_bias_table", 1),))


resizer(Attention, WindowAttention)(resize_heads)
