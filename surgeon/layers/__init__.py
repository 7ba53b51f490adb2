"""Attention layers whose attention width may differ from the embedding width they read.

`nn.MultiheadAttention`, torchvision's Swin `ShiftedWindowAttention(V2)` and MaxViT's
`RelativePositionalMultiHeadAttention` derive their head width from their input width
(`embed_dim // num_heads`, `C // num_heads`, a reshape back to the input width). Once whole heads
leave while the embedding width stays, their own `forward` cannot run. The rebuild then switches
such a module's class, in place, to its subclass here: same object, parameters, buffers and
state-dict keys, `isinstance` still holds, and `forward` computes the same function while reading
`num_heads` / `head_dim` instead of deriving them. Modules whose widths still match keep their class.
"""
from .mha import SlimMultiheadAttention

__all__ = ["SlimMultiheadAttention"]
