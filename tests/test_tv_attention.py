"""torchvision transformers: `nn.MultiheadAttention` (ViT), Swin V1/V2 and MaxViT attention lose
whole heads with the generic call; MLP hidden dims halve; the embedding dim only on request.

Weights are livened (see `util.liven`: torchvision's ViT classifier starts at zero, which would
make every check trivially true) and each test asserts that pruning changed the output.
"""
from __future__ import annotations

import gc

import pytest
import torch
import torchvision
from torch import nn
from torchvision.models.maxvit import RelativePositionalMultiHeadAttention
from torchvision.models.swin_transformer import (
    PatchMergingV2, ShiftedWindowAttention, SwinTransformerBlockV2,
)

import surgeon
from surgeon.layers import SlimMultiheadAttention
from util import liven

HEADED = (nn.MultiheadAttention, ShiftedWindowAttention, RelativePositionalMultiHeadAttention)


def heads(model: nn.Module) -> dict[str, int]:
    """Head count of every attention layer, by module name."""
    return {n: getattr(m, "num_heads", getattr(m, "n_heads", None))
            for n, m in model.named_modules() if isinstance(m, HEADED)}


def mlp_hidden(model: nn.Module) -> dict[str, int]:
    """Width of every block MLP's expanding Linear, by module name (Swin V2's position-bias
    MLP inside the attention layer is not a block MLP and is kept)."""
    return {n: m.out_features for n, m in model.named_modules()
            if isinstance(m, nn.Linear) and "mlp" in n and "cpb" not in n and m.out_features > m.in_features}


def change(a: nn.Module, b: nn.Module, x: torch.Tensor) -> float:
    with torch.no_grad():
        return float((a(x) - b(x)).norm() / b(x).norm())


def check_halved(model: nn.Module, x: torch.Tensor, **kw) -> nn.Module:
    """Slim at 0.5: same class and output shape, every layer's heads and MLP halved, verified."""
    liven(model, x)
    before_heads, before_mlp = heads(model), mlp_hidden(model)
    slim = surgeon.slim(model, 0.5, x, **kw)
    assert type(slim) is type(model)
    assert before_heads and heads(slim) == {n: h - h // 2 for n, h in before_heads.items()}
    assert before_mlp and mlp_hidden(slim) == {n: w - w // 2 for n, w in before_mlp.items()}
    report = surgeon.verify(model, slim, x)
    assert report.ok, report
    assert change(slim, model, x) > 1e-3
    return slim


def tiny_vit(**kw) -> nn.Module:
    return torchvision.models.VisionTransformer(32, 8, num_layers=2, num_heads=4, hidden_dim=24, mlp_dim=64, **kw)


X32 = torch.randn(2, 3, 32, 32)


def test_vit_heads_leave_whole():
    model = tiny_vit()
    slim = check_halved(model, X32)
    attn = slim.encoder.layers[0].self_attention
    assert isinstance(attn, nn.MultiheadAttention) and type(attn) is SlimMultiheadAttention
    assert attn.head_dim == 6 and attn.embed_dim == 24 and attn.in_proj_weight.shape == (36, 24)
    assert slim.encoder.layers[0].num_heads == 2
    again = surgeon.slim(slim, 0.5, X32)
    assert heads(again) == {n: 1 for n in heads(slim)} and surgeon.verify(slim, again).ok


def test_slim_vit_saves_and_loads(tmp_path):
    slim = surgeon.slim(liven(tiny_vit(), X32), 0.5, X32)
    torch.save(slim, tmp_path / "slim.pt")
    loaded = torch.load(tmp_path / "slim.pt", weights_only=False)
    assert type(loaded.encoder.layers[0].self_attention) is SlimMultiheadAttention
    with torch.no_grad():
        assert torch.equal(loaded.eval()(X32), slim(X32))


def test_vit_head_scores_rank_whole_heads():
    model = liven(tiny_vit(), X32)
    attn = model.encoder.layers[0].self_attention
    with torch.no_grad():
        attn.in_proj_weight.view(3, 4, 6, 24)[:, 2:] *= 10
    slim = surgeon.slim(model, 0.5, X32)
    kept = slim.encoder.layers[0].self_attention.in_proj_weight.view(3, 2, 6, 24)
    assert torch.equal(kept, attn.in_proj_weight.view(3, 4, 6, 24)[:, 2:])


def test_vit_prune_head_dims_keeps_count():
    model = liven(tiny_vit(), X32)
    plan = surgeon.plan(model, 0.5, X32, prune_head_dims=True)
    slim = plan.apply(model)
    attn = slim.encoder.layers[0].self_attention
    assert attn.num_heads == 4 and attn.head_dim == 3 and attn.out_proj.in_features == 12
    report = surgeon.verify(model, slim, X32, plan=plan)
    assert report.ok and any("scale" in why for _, why in report.unchecked)


def test_vit_embed_dim_on_request_updates_hidden_dim():
    model = liven(tiny_vit(), X32)
    assert surgeon.slim(model, 0.5, X32).hidden_dim == 24
    plan = surgeon.plan(model, 0.5, X32, prune_embed=True)
    embed = [g for g in plan.groups if "conv_proj.weight" in g.spaces[0]]
    assert len(embed) == 1 and not embed[0].exact and embed[0].frozen_units == 0
    slim = plan.apply(model)
    assert slim.hidden_dim == 12 and slim.conv_proj.out_channels == 12
    assert slim.class_token.shape == (1, 1, 12) and slim.encoder.pos_embedding.shape[-1] == 12
    assert slim.encoder.layers[0].self_attention.embed_dim == 12 and slim.heads.head.in_features == 12
    report = surgeon.verify(model, slim, X32, plan=plan)
    assert report.ok and any("LayerNorm" in why for _, why in report.unchecked)


@pytest.mark.parametrize("problem, kw", [
    ("bias_k", {"add_bias_kv": True}),
    ("add_zero_attn", {"add_zero_attn": True}),
])
def test_multihead_attention_variants_keep_heads(problem, kw):
    model = nn.Sequential(nn.Linear(8, 16), nn.Identity())
    attn = nn.MultiheadAttention(16, 4, batch_first=True, **kw)

    class Net(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.inp, self.attn, self.out = model[0], attn, nn.Linear(16, 3)

        def forward(self, x):
            return self.out(self.attn(self.inp(x), self.inp(x), self.inp(x))[0])

    net = Net().eval()
    plan = surgeon.plan(net, 0.5, torch.randn(2, 5, 8))
    assert any(problem in why for g in plan.groups for why in g.frozen_why)
    assert plan.apply(net).attn.num_heads == 4


def test_used_attention_weights_keep_heads():
    class Net(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.attn = nn.MultiheadAttention(16, 4, batch_first=True)

        def forward(self, x):
            out, weights = self.attn(x, x, x)
            return out.mean() + weights.mean()

    plan = surgeon.plan(Net().eval(), 0.5, torch.randn(2, 5, 16))
    assert any("attention weights" in why for g in plan.groups for why in g.frozen_why)


def tiny_swin(v2: bool) -> nn.Module:
    kw = {"block": SwinTransformerBlockV2, "downsample_layer": PatchMergingV2} if v2 else {}
    return torchvision.models.SwinTransformer([4, 4], 16, [2, 2], [2, 4], [4, 4], num_classes=10,
                                              stochastic_depth_prob=0.0, **kw)


def tiny_maxvit() -> nn.Module:
    return torchvision.models.MaxVit((64, 64), 16, 4, [32, 64], [1, 1], 8, 0.0, num_classes=10)


TINY = {"vit": (tiny_vit, X32), "swin": (lambda: tiny_swin(False), torch.randn(2, 3, 48, 48)),
        "swin_v2": (lambda: tiny_swin(True), torch.randn(2, 3, 48, 48)),
        "maxvit": (tiny_maxvit, torch.randn(2, 3, 64, 64))}


@pytest.mark.parametrize("v2", [False, True])
def test_tiny_swin_heads(v2):
    slim = check_halved(tiny_swin(v2), TINY["swin"][1])
    attn = slim.features[1][0].attn
    assert attn.relative_position_bias_table.shape[1] == 1 if not v2 else attn.logit_scale.shape[0] == 1


def test_tiny_maxvit_heads():
    slim = check_halved(tiny_maxvit(), TINY["maxvit"][1])
    attn = next(m for m in slim.modules() if isinstance(m, RelativePositionalMultiHeadAttention))
    assert attn.relative_position_bias_table.shape[1] == attn.n_heads == 2


@pytest.mark.parametrize("name", TINY)
@pytest.mark.parametrize("option", ["prune_embed", "prune_head_dims"])
def test_options_run_and_keep_shapes(name, option):
    """The embedding dim (inexact: LayerNorm) and head widths prune everywhere, nothing is left
    frozen for want of a handler, and the exact groups still verify."""
    build, x = TINY[name]
    model = liven(build(), x)
    plan = surgeon.plan(model, 0.5, x, **{option: True})
    assert not any("no handler" in why or "literal" in why for g in plan.groups for why in g.frozen_why)
    slim = plan.apply(model)
    with torch.no_grad():
        assert slim(x).shape == model(x).shape
    report = surgeon.verify(model, slim, x, plan=plan)
    assert report.ok, report
    if option == "prune_embed":
        assert any("LayerNorm" in why for _, why in report.unchecked)
        assert sum(p.numel() for p in slim.parameters()) < 0.5 * sum(p.numel() for p in model.parameters())


def test_undo_restores_the_class():
    model = liven(tiny_vit(), X32).eval()
    plan = surgeon.plan(model, 0.5, X32)
    twin = surgeon.core.rebuild.clone(model)
    undo = surgeon.core.rebuild.rebuild(twin, plan)
    assert type(twin.encoder.layers[0].self_attention) is SlimMultiheadAttention
    undo()
    assert type(twin.encoder.layers[0].self_attention) is nn.MultiheadAttention
    assert twin.encoder.layers[0].self_attention.num_heads == 4


TORCHVISION = ["vit_b_16", "vit_b_32", "vit_l_16", "vit_l_32", "vit_h_14", "swin_t", "swin_s", "swin_b",
               "swin_v2_t", "swin_v2_s", "swin_v2_b", "maxvit_t"]


@pytest.mark.parametrize("name", TORCHVISION)
def test_torchvision_transformer_zoo(name):
    """Every torchvision transformer at 224 (vit_h_14: 36 s and ~11 GB peak on 2 cores)."""
    gc.collect()
    check_halved(getattr(torchvision.models, name)(weights=None), torch.randn(1, 3, 224, 224))


def test_verify_warns_when_outputs_are_constant():
    """torchvision's ViT starts with a zero classifier: every output is 0 and OK proves nothing."""
    model = tiny_vit().eval()
    report = surgeon.verify(model, surgeon.slim(model, 0.5, X32))
    assert report.ok and report.constant and "WARNING" in repr(report)
    model = liven(model, X32)
    assert not surgeon.verify(model, surgeon.slim(model, 0.5, X32)).constant
