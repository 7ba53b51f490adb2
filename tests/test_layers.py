"""`surgeon.layers`: each width-agnostic subclass computes exactly what its parent computes
while the widths still match (every argument combination the parent supports and we claim)."""
from __future__ import annotations

import copy

import pytest
import torch
from torch import nn
from torchvision.models.maxvit import RelativePositionalMultiHeadAttention
from torchvision.models.swin_transformer import ShiftedWindowAttention, ShiftedWindowAttentionV2

from surgeon.layers import SlimMultiheadAttention
from surgeon.layers.vision import (
    SlimRelativePositionalMultiHeadAttention, SlimShiftedWindowAttention, SlimShiftedWindowAttentionV2,
)


def switched(module: nn.Module, cls: type) -> nn.Module:
    twin = copy.deepcopy(module)
    twin.__class__ = cls
    return twin


def close(a: torch.Tensor | None, b: torch.Tensor | None) -> bool:
    if a is None or b is None:
        return a is None and b is None
    return a.shape == b.shape and bool((a - b).abs().max() <= 1e-5 * (1 + a.abs().max()))


N, L, S = 3, 5, 7
g = torch.Generator().manual_seed(0)
PAD = torch.rand(N, S, generator=g) > 0.7
PAD[:, 0] = False
BOOL_MASK = torch.rand(L, S, generator=g) > 0.8
BOOL_MASK[:, 0] = False
CALLS = [
    {},
    {"need_weights": False},
    {"key_padding_mask": PAD},
    {"attn_mask": BOOL_MASK},
    {"attn_mask": torch.randn(N * 4, L, S, generator=g), "average_attn_weights": False},
    {"attn_mask": BOOL_MASK, "key_padding_mask": PAD, "need_weights": False},
    {"attn_mask": torch.triu(torch.full((L, S), float("-inf")), 1), "is_causal": True},
]


@pytest.mark.parametrize("batch_first", [True, False])
@pytest.mark.parametrize("kdim", [None, 12])
@pytest.mark.parametrize("kw", CALLS, ids=range(len(CALLS)))
def test_multihead_attention_matches_parent(batch_first, kdim, kw):
    torch.manual_seed(0)
    m = nn.MultiheadAttention(16, 4, batch_first=batch_first, kdim=kdim, vdim=kdim).eval()
    slim = switched(m, SlimMultiheadAttention)
    q = torch.randn(N, L, 16) if batch_first else torch.randn(L, N, 16)
    k = torch.randn(N, S, kdim or 16) if batch_first else torch.randn(S, N, kdim or 16)
    (a, wa), (b, wb) = m(q, k, k, **kw), slim(q, k, k, **kw)
    assert close(a, b) and close(wa, wb)


def test_multihead_attention_self_and_unbatched():
    m = nn.MultiheadAttention(16, 4).eval()
    slim = switched(m, SlimMultiheadAttention)
    for x in (torch.randn(L, N, 16), torch.randn(L, 16)):
        (a, wa), (b, wb) = m(x, x, x), slim(x, x, x)
        assert close(a, b) and close(wa, wb)


@pytest.mark.parametrize("cls, slim_cls", [(ShiftedWindowAttention, SlimShiftedWindowAttention),
                                           (ShiftedWindowAttentionV2, SlimShiftedWindowAttentionV2)])
@pytest.mark.parametrize("shift", [[0, 0], [2, 2]])
@pytest.mark.parametrize("hw", [(8, 8), (7, 10), (3, 5)])
def test_window_attention_matches_parent(cls, slim_cls, shift, hw):
    torch.manual_seed(0)
    m = cls(16, [4, 4], shift, 4).eval()
    with torch.no_grad():
        for p in m.parameters():
            p.normal_()
    x = torch.randn(2, *hw, 16)
    assert close(m(x), switched(m, slim_cls)(x))


def test_maxvit_attention_matches_parent():
    torch.manual_seed(0)
    m = RelativePositionalMultiHeadAttention(32, 8, 16).eval()
    x = torch.randn(2, 3, 16, 32)
    assert close(m(x), switched(m, SlimRelativePositionalMultiHeadAttention)(x))


@pytest.mark.parametrize("shared_bias", [False, True])
@pytest.mark.parametrize("qkv_bias", [False, True])
def test_slim_beit_attention_matches_timm(qkv_bias, shared_bias):
    from timm.models.beit import Attention as BeitAttention

    from surgeon.layers.timm import SlimBeitAttention

    m = BeitAttention(32, num_heads=4, qkv_bias=qkv_bias, window_size=(3, 3)).eval()
    x = torch.randn(2, 10, 32, generator=g)
    bias = torch.randn(1, 4, 10, 10, generator=g) if shared_bias else None
    with torch.no_grad():
        if qkv_bias:
            m.q_bias.normal_(generator=g)
            m.v_bias.normal_(generator=g)
        m.relative_position_bias_table.normal_(generator=g)
        assert close(switched(m, SlimBeitAttention)(x, bias), m(x, bias))


def test_slim_class_attention_matches_timm():
    from timm.models.cait import ClassAttn

    from surgeon.layers.timm import SlimClassAttn

    m = ClassAttn(32, num_heads=4, qkv_bias=True).eval()
    x = torch.randn(2, 10, 32, generator=g)
    with torch.no_grad():
        assert close(switched(m, SlimClassAttn)(x), m(x))
