"""torchvision's Swin and MaxViT attention, with the head width read from attributes."""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor
from torchvision.models.maxvit import RelativePositionalMultiHeadAttention
from torchvision.models.swin_transformer import ShiftedWindowAttention, ShiftedWindowAttentionV2

__all__ = ["window_attention", "SlimShiftedWindowAttention", "SlimShiftedWindowAttentionV2",
           "SlimRelativePositionalMultiHeadAttention"]


def _shift_mask(pad_h: int, pad_w: int, window: list[int], shift: list[int], like: Tensor) -> Tensor:
    """-100 between tokens of one shifted window that came from different regions, else 0."""
    region = like.new_zeros((pad_h, pad_w))
    bounds = [((0, -w), (-w, -s), (-s, None)) for w, s in zip(window, shift)]
    for i, (h0, h1) in enumerate(bounds[0]):
        for j, (w0, w1) in enumerate(bounds[1]):
            region[h0:h1, w0:w1] = 3 * i + j
    region = region.view(pad_h // window[0], window[0], pad_w // window[1], window[1])
    region = region.permute(0, 2, 1, 3).reshape(-1, window[0] * window[1])
    diff = region.unsqueeze(1) - region.unsqueeze(2)
    return diff.masked_fill(diff != 0, -100.0)


def window_attention(m: ShiftedWindowAttention, x: Tensor, bias: Tensor, logit_scale: Tensor | None) -> Tensor:
    """Swin's shifted-window attention with the head width read from `m.qkv` and `m.num_heads`."""
    b, height, width, _ = x.shape
    window = m.window_size
    x = F.pad(x, (0, 0, 0, -width % window[1], 0, -height % window[0]))
    pad_h, pad_w = x.shape[1], x.shape[2]
    shift = [0 if w >= p else s for w, p, s in zip(window, (pad_h, pad_w), m.shift_size)]
    if sum(shift) > 0:
        x = torch.roll(x, shifts=(-shift[0], -shift[1]), dims=(1, 2))
    rows, cols, tokens = pad_h // window[0], pad_w // window[1], window[0] * window[1]
    x = x.view(b, rows, window[0], cols, window[1], -1).permute(0, 1, 3, 2, 4, 5).reshape(b * rows * cols, tokens, -1)
    h = m.num_heads
    d = m.qkv.weight.shape[0] // (3 * h)
    qkv_bias = m.qkv.bias
    if logit_scale is not None and qkv_bias is not None:
        qkv_bias = torch.cat([qkv_bias[: h * d], torch.zeros_like(qkv_bias[: h * d]), qkv_bias[2 * h * d:]])
    q, k, v = F.linear(x, m.qkv.weight, qkv_bias).reshape(x.shape[0], tokens, 3, h, d).permute(2, 0, 3, 1, 4)
    if logit_scale is not None:
        attn = F.normalize(q, dim=-1) @ F.normalize(k, dim=-1).transpose(-2, -1)
        attn = attn * torch.clamp(logit_scale, max=math.log(100.0)).exp()
    else:
        attn = (q * d ** -0.5) @ k.transpose(-2, -1)
    attn = attn + bias
    if sum(shift) > 0:
        mask = _shift_mask(pad_h, pad_w, window, shift, x)
        attn = (attn.view(b, rows * cols, h, tokens, tokens) + mask.unsqueeze(1).unsqueeze(0)).view(-1, h, tokens, tokens)
    attn = F.dropout(attn.softmax(-1), p=m.attention_dropout, training=m.training)
    out = (attn @ v).transpose(1, 2).reshape(x.shape[0], tokens, h * d)
    out = F.dropout(F.linear(out, m.proj.weight, m.proj.bias), p=m.dropout, training=m.training)
    out = out.view(b, rows, cols, window[0], window[1], -1).permute(0, 1, 3, 2, 4, 5).reshape(b, pad_h, pad_w, -1)
    if sum(shift) > 0:
        out = torch.roll(out, shifts=(shift[0], shift[1]), dims=(1, 2))
    return out[:, :height, :width, :].contiguous()


class SlimShiftedWindowAttention(ShiftedWindowAttention):
    """Swin V1 window attention whose heads need not fill the embedding width."""

    def forward(self, x: Tensor) -> Tensor:
        return window_attention(self, x, self.get_relative_position_bias(), None)


class SlimShiftedWindowAttentionV2(ShiftedWindowAttentionV2):
    """Swin V2 (cosine) window attention whose heads need not fill the embedding width."""

    def forward(self, x: Tensor) -> Tensor:
        return window_attention(self, x, self.get_relative_position_bias(), self.logit_scale)


class SlimRelativePositionalMultiHeadAttention(RelativePositionalMultiHeadAttention):
    """MaxViT attention whose output keeps `n_heads · head_dim` channels before `merge`."""

    def forward(self, x: Tensor) -> Tensor:
        b, g, p, _ = x.shape
        h, d = self.n_heads, self.head_dim
        q, k, v = self.to_qkv(x).reshape(b, g, p, 3, h, d).permute(3, 0, 1, 4, 2, 5)
        attn = F.softmax(q @ (k * self.scale_factor).transpose(-2, -1) + self.get_relative_positional_bias(), dim=-1)
        return self.merge((attn @ v).permute(0, 1, 3, 2, 4).reshape(b, g, p, h * d))
