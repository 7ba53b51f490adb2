"""timm's BEiT attention and CaiT / XCiT class attention, with the head width read from their
projections instead of from the input width (`C // num_heads`, `reshape(B, N, C)`)."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from timm.models.beit import Attention as BeitAttention
from timm.models.cait import ClassAttn
from torch import Tensor

__all__ = ["SlimBeitAttention", "SlimClassAttn"]


def _attend(m: BeitAttention | ClassAttn, q: Tensor, k: Tensor, v: Tensor, bias: Tensor | None) -> Tensor:
    """softmax(q kᵀ · scale + bias) v, with the module's own scale (exact when heads leave)."""
    return F.scaled_dot_product_attention(q, k, v, attn_mask=bias, scale=m.scale,
                                          dropout_p=m.attn_drop.p if m.training else 0.0)


class SlimBeitAttention(BeitAttention):
    """BEiT attention whose attention width may differ from the embedding width."""

    def forward(self, x: Tensor, shared_rel_pos_bias: Tensor | None = None) -> Tensor:
        b, n, _ = x.shape
        bias = None if self.q_bias is None else torch.cat((self.q_bias, self.k_bias, self.v_bias))
        qkv = F.linear(x, self.qkv.weight, bias).reshape(b, n, 3, self.num_heads, -1).permute(2, 0, 3, 1, 4)
        rel = self._get_rel_pos_bias() if self.relative_position_bias_table is not None else None
        if shared_rel_pos_bias is not None:
            rel = shared_rel_pos_bias if rel is None else rel + shared_rel_pos_bias
        out = _attend(self, *qkv.unbind(0), rel).transpose(1, 2).reshape(b, n, -1)
        return self.proj_drop(self.proj(out))


class SlimClassAttn(ClassAttn):
    """Class attention (the class token queries every token) whose attention width may differ
    from the embedding width."""

    def forward(self, x: Tensor) -> Tensor:
        b, n, _ = x.shape
        h = self.num_heads
        q = self.q(x[:, 0]).unsqueeze(1).reshape(b, 1, h, -1).permute(0, 2, 1, 3)
        k = self.k(x).reshape(b, n, h, -1).permute(0, 2, 1, 3)
        v = self.v(x).reshape(b, n, h, -1).permute(0, 2, 1, 3)
        out = _attend(self, q, k, v, None).transpose(1, 2).reshape(b, 1, -1)
        return self.proj_drop(self.proj(out))
