"""Attention heads in timm: `Attention` and Swin's `WindowAttention` lose whole heads (or head
width); the embedding dim only on request; timm CNNs slim generically. torchvision's attention
layers are in test_tv_attention.py."""
from __future__ import annotations

import pytest
import timm
import torch
from timm.layers import Attention
from torch import nn

import surgeon
from util import params


class Block(nn.Module):
    """A pre-norm transformer block around timm's Attention."""

    def __init__(self, dim: int = 32, heads: int = 4, **kw) -> None:
        super().__init__()
        self.embed = nn.Linear(8, dim)
        self.norm1, self.attn = nn.LayerNorm(dim), Attention(dim, heads, qkv_bias=True, **kw)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = nn.Sequential(nn.Linear(dim, 2 * dim), nn.GELU(), nn.Linear(2 * dim, dim))
        self.head = nn.Linear(dim, 3)

    def forward(self, x):
        x = self.embed(x)
        x = x + self.attn(self.norm1(x))
        x = x + self.mlp(self.norm2(x))
        return self.head(x.mean(1))


X = torch.randn(2, 5, 8)


def changed(a: nn.Module, b: nn.Module, x: torch.Tensor) -> float:
    with torch.no_grad():
        return float((a(x) - b(x)).norm() / b(x).norm())


@pytest.mark.parametrize("kw", [{}, {"qk_norm": True, "norm_layer": nn.LayerNorm}, {"gated": True}])
def test_whole_heads_leave(kw):
    model = Block(**kw).eval()
    slim = surgeon.slim(model, 0.5, X)
    attn = slim.attn
    assert attn.num_heads == 2 and attn.head_dim == 8 and attn.attn_dim == 16
    assert attn.qkv.weight.shape == (48, 32) and attn.proj.weight.shape == (32, 16)
    assert slim.mlp[0].out_features == 32 and slim.norm1.normalized_shape == (32,)
    report = surgeon.verify(model, slim)
    assert report.ok and len(report.checked) == 2 and not report.unchecked
    assert changed(slim, model, X) > 1e-3


def test_head_scores_rank_whole_heads():
    model = Block().eval()
    with torch.no_grad():
        model.attn.qkv.weight.view(3, 4, 8, 32)[:, 1:3] *= 10  # heads 1 and 2 are the strongest
    slim = surgeon.slim(model, 0.5, X)
    kept = slim.attn.qkv.weight.view(3, 2, 8, 32)[0]
    assert torch.equal(kept, model.attn.qkv.weight.view(3, 4, 8, 32)[0, 1:3])


def test_prune_head_dims_keeps_the_count_and_is_inexact():
    model = Block(qk_norm=True, norm_layer=nn.LayerNorm).eval()
    plan = surgeon.plan(model, 0.5, X, prune_head_dims=True)
    slim = plan.apply(model)
    attn = slim.attn
    assert attn.num_heads == 4 and attn.head_dim == 4 and attn.scale == 4 ** -0.5
    assert attn.q_norm.normalized_shape == (4,)
    report = surgeon.verify(model, slim, X, plan=plan)
    assert report.ok and any("scale" in why for _, why in report.unchecked)


def test_embed_dim_only_on_request():
    model = Block().eval()
    plan = surgeon.plan(model, 0.5, X)
    frozen = [g for g in plan.groups if any("prune_embed" in w for w in g.frozen_why)]
    assert frozen and all(g.frozen_units == g.units for g in frozen)
    slim = surgeon.slim(model, 0.5, X, prune_embed=True)
    assert slim.embed.out_features == 16 and slim.norm1.normalized_shape == (16,)
    assert slim.attn.qkv.in_features == 16 and slim.head.in_features == 16
    report = surgeon.verify(model, slim)
    assert report.ok and any("LayerNorm" in why for _, why in report.unchecked)


def attentions(model: nn.Module) -> list[nn.Module]:
    return [m for m in model.modules() if hasattr(m, "num_heads") and hasattr(m, "qkv")]


@pytest.mark.parametrize("name, kw", [
    ("vit_small_patch16_224", {"img_size": 32}),
    ("vit_base_patch16_224", {"img_size": 32}),
    ("deit_small_patch16_224", {"img_size": 32}),
    ("swin_tiny_patch4_window7_224", {}),
])
def test_timm_transformers_heads_and_mlp_halved(name, kw):
    model = timm.create_model(name, pretrained=False, **kw).eval()
    x = torch.randn(1, 3, kw.get("img_size", 224), kw.get("img_size", 224))
    slim = surgeon.slim(model, 0.5, x)
    assert type(slim) is type(model)
    pairs = list(zip(attentions(model), attentions(slim)))
    assert pairs and all(b.num_heads == a.num_heads - a.num_heads // 2 for a, b in pairs)
    fc1 = [(a, b) for (n, a), b in zip(model.named_modules(), slim.modules()) if n.endswith("mlp.fc1")]
    assert fc1 and all(b.out_features == a.out_features // 2 for a, b in fc1)
    assert slim(x).shape == model(x).shape
    report = surgeon.verify(model, slim)
    assert report.ok and len(report.checked) == 2 * len(pairs)
    assert changed(slim, model, x) > 1e-3


@pytest.mark.parametrize("name", ["resnet50", "efficientnet_b0", "convnext_tiny"])
def test_timm_cnns(name):
    model = timm.create_model(name, pretrained=False).eval()
    x = torch.randn(1, 3, 64, 64)
    slim = surgeon.slim(model, 0.5, x)
    assert type(slim) is type(model) and slim(x).shape == model(x).shape
    assert sum(p.numel() for p in slim.parameters()) < 0.6 * sum(p.numel() for p in model.parameters())
    assert surgeon.verify(model, slim).ok


def _live(model: nn.Module) -> nn.Module:
    """Unit-scale weights and layer scales: every head visibly moves the output."""
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.dim() > 1:
                p.copy_(torch.randn(p.shape, generator=g) * p[0].numel() ** -0.5)
            elif "gamma" in name:
                p.fill_(1.0)
    return model.eval()


@pytest.mark.parametrize("name, kw, counted", [
    ("beit_base_patch16_224", {"depth": 2, "img_size": 32, "patch_size": 8}, "qkv"),
    ("cait_xxs24_224", {"depth": 1, "img_size": 32, "patch_size": 8}, "q"),
])
def test_heads_read_from_the_input_width_leave_whole(name, kw, counted):
    """BEiT's attention and CaiT's class attention derive the head width from their input: heads
    leave whole, the layers switch to their width-agnostic subclass, and the check is exact."""
    model = _live(timm.create_model(name, pretrained=False, **kw))
    x = torch.randn(1, 3, 32, 32)
    slim = surgeon.slim(model, 0.5, x)
    layers = [(a, b) for a, b in zip(model.modules(), slim.modules()) if hasattr(a, "num_heads") and hasattr(a, counted)]
    assert layers and all(b.num_heads == a.num_heads // 2 for a, b in layers)
    assert all(type(b).__name__.startswith("Slim") and isinstance(b, type(a)) for a, b in layers)
    report = surgeon.verify(model, slim)
    assert report.ok and not report.unchecked and changed(slim, model, x) > 1e-3


EXPORT_ONLY = [  # timm families fx cannot trace (shape-dependent Python): traced by torch.export
    ("convit_tiny", {"depth": 2}, 224),
    ("mobilevit_xxs", {}, 64),
    ("twins_svt_small", {"depths": (1, 1, 1, 1)}, 64),
    ("crossvit_tiny_240", {"depth": ((1, 1, 0), (1, 1, 0), (1, 1, 0))}, 240),
    ("xcit_nano_12_p16_224", {"depth": 2}, 64),
    ("samvit_base_patch16", {"depth": 2, "img_size": 64, "global_attn_indexes": ()}, 64),
    ("maxvit_tiny_tf_224", {"depths": (1, 1, 1, 1)}, 224),
    ("mvitv2_tiny", {"img_size": 64}, 64),
]


EXPORT_SLOW = {"samvit_base_patch16", "maxvit_tiny_tf_224", "mobilevit_xxs", "crossvit_tiny_240"}


@pytest.mark.parametrize("name, kw, size", params(EXPORT_ONLY, EXPORT_SLOW))
def test_timm_families_fx_cannot_trace_slim_through_export(name, kw, size):
    """fx fails on these (the error is kept); torch.export traces them, the slim model keeps the
    output shape, is smaller, and every checked group is mask-equivalent."""
    model = _live(timm.create_model(name, pretrained=False, **kw))
    x = torch.randn(1, 3, size, size)
    slim = surgeon.slim(model, 0.5, x)
    assert slim(x).shape == model(x).shape
    assert sum(p.numel() for p in slim.parameters()) < 0.9 * sum(p.numel() for p in model.parameters())
    report = surgeon.verify(model, slim)
    assert report.ok and report.checked and changed(slim, model, x) > 1e-3


class WrittenOut(nn.Module):
    """Attention written out in `forward` (no handler sees it whole): the head split's
    `self.num_heads` makes heads the units."""

    def __init__(self, dim: int = 16, heads: int = 4) -> None:
        super().__init__()
        self.num_heads = heads
        self.qkv, self.proj = nn.Linear(dim, 3 * dim), nn.Linear(dim, dim)

    def forward(self, x):
        b, n, _ = x.shape
        q, k, v = self.qkv(x).reshape(b, n, 3, self.num_heads, -1).permute(2, 0, 3, 1, 4)
        attn = ((q @ k.transpose(-2, -1)) * 0.5).softmax(-1)
        return self.proj((attn @ v).transpose(1, 2).reshape(b, n, -1))


@pytest.mark.parametrize("frontend", ["fx", "export"])
def test_written_out_attention_honours_prune_heads(frontend):
    model = nn.Sequential(nn.Linear(8, 16), WrittenOut(), nn.Linear(16, 3)).eval()
    x = torch.randn(2, 5, 8)
    heads = surgeon.slim(model, 0.5, x, frontend=frontend)
    kept = surgeon.slim(model, 0.5, x, frontend=frontend, prune_heads=False)
    assert heads[1].num_heads == 2 and heads[1].qkv.out_features == 24
    assert kept[1].num_heads == 4 and kept[1].qkv.out_features == 48
    assert heads[0].out_features == kept[0].out_features == 16  # the width attention reads stays
    assert surgeon.verify(model, heads).ok and surgeon.verify(model, kept).ok
