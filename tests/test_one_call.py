"""Blocks kept as one call with their own handler — squeeze-excitation blocks (torchvision's and
timm's: EfficientNet, MobileNet-V3, RegNet-Y, SE-ResNet) and timm's `BatchNormAct2d`: the plans,
calibration statistics and bias compensation equal those of the blocks traced through, and an
unusual block is traced through."""
from __future__ import annotations

import warnings
from functools import partial

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torchvision.ops.misc import SqueezeExcitation

import surgeon
from surgeon.core import trace
from surgeon.ops import load_optional, registry
from util import liven, roundtrip

X = torch.randn(2, 3, 24, 24)


class SENet(nn.Module):
    def __init__(self, se: nn.Module | None = None) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), nn.BatchNorm2d(16), nn.SiLU())
        self.se = se if se is not None else SqueezeExcitation(16, 6, activation=nn.SiLU)
        self.mid = nn.Conv2d(16, 12, 3, padding=1)
        self.se2 = SqueezeExcitation(12, 4, scale_activation=nn.Hardsigmoid)
        self.head = nn.Linear(12, 5)

    def forward(self, x):
        x = F.relu(self.mid(self.se(self.stem(x))))
        return self.head(self.se2(x).mean((2, 3)))


def _summary(p: surgeon.Plan) -> tuple:
    cuts = sorted((c.tensor, c.dim, c.remove) for c in p.cuts)
    shifts = sorted((s.module, s.index, tuple(round(m, 6) for m in s.mean)) for s in p.shifts)
    return cuts, shifts


def test_squeeze_excitation_is_one_call_that_plans_as_traced_through(monkeypatch):
    model = liven(SENet().eval(), X)
    graph = trace.trace(model, surgeon.util.Inputs((X,)))[0].graph
    assert [n.target for n in graph.nodes if n.op == "call_module" and n.target.startswith("se")] == ["se", "se2"]
    batches = [torch.randn(4, 3, 24, 24) for _ in range(2)]
    kinds = {"l2": {}, "activation": {"calibration": batches, "compensate": True},
             "fluctuation": {"calibration": batches}}
    one_call = {k: _summary(surgeon.plan(model, 0.5, X, importance=k, **kw)) for k, kw in kinds.items()}
    assert all(one_call[k][1] for k in ("activation",)), "compensation found no layer"
    assert any(t.startswith("se.fc1.weight") and d == 0 for t, d, _ in one_call["l2"][0]), "squeeze channels kept"
    monkeypatch.delitem(registry._HANDLERS, SqueezeExcitation)
    traced_through = {k: _summary(surgeon.plan(model, 0.5, X, importance=k, **kw)) for k, kw in kinds.items()}
    assert one_call == traced_through


def test_squeeze_excitation_roundtrip_with_compensation():
    model = liven(SENet().eval(), X)
    slim, report = roundtrip(model, X, 0.5, importance="activation", calibration=[X], compensate=True)
    assert slim.se.fc1.out_channels == slim.se.fc1.weight.shape[0] == 3
    assert slim.se.fc2.in_channels == 3 and slim.se.fc1.in_channels == slim.stem[0].out_channels == 8
    assert report.compensated


class _OwnScale(SqueezeExcitation):
    def _scale(self, input):
        return torch.sigmoid(self.fc2(self.fc1(self.avgpool(input))))


def _max_pooled() -> SqueezeExcitation:
    se = SqueezeExcitation(16, 6)
    se.avgpool = nn.AdaptiveMaxPool2d(1)
    return se


def _grouped() -> SqueezeExcitation:
    se = SqueezeExcitation(16, 6)
    se.fc1 = nn.Conv2d(16, 6, 1, groups=2)
    return se


@pytest.mark.parametrize("make", [
    lambda: SqueezeExcitation(16, 6, activation=partial(nn.Softmax, dim=1)),
    lambda: SqueezeExcitation(16, 6, scale_activation=partial(nn.Softmax, dim=1)),
    _max_pooled, _grouped, lambda: _OwnScale(16, 6),
], ids=["activation", "scale_activation", "max_pool", "grouped", "own_scale"])
def test_an_unusual_squeeze_excitation_is_traced_through(make):
    """A block the handler cannot describe is traced op by op, as without the handler."""
    load_optional()
    model = liven(SENet(make()).eval(), X)
    called = [n.target for n in trace.trace(model, surgeon.util.Inputs((X,)))[0].graph.nodes if n.op == "call_module"]
    assert "se" not in called and "se.fc1" in called and "se2" in called
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        slim, _ = roundtrip(model, X, 0.5)
    assert slim.stem[0].out_channels == 8, "the block's input channels are pruned as usual"
    assert slim.se2.fc1.out_channels == 2, "the usual block beside it is one call, pruned"


@pytest.mark.parametrize("name", ["mobilenetv3_small_050", "regnety_002", "seresnet18"])
def test_timm_blocks_are_one_call_that_plans_as_traced_through(monkeypatch, name):
    timm = pytest.importorskip("timm")
    from timm.layers.norm_act import BatchNormAct2d
    from timm.layers.squeeze_excite import SEModule
    from timm.models._efficientnet_blocks import SqueezeExcite

    load_optional()
    model = liven(timm.create_model(name, pretrained=False).eval(), torch.randn(2, 3, 64, 64))
    x = torch.randn(1, 3, 64, 64)
    called = {n.target for n in trace.trace(model, surgeon.util.Inputs((x,)))[0].graph.nodes if n.op == "call_module"}
    blocks = {p for p, m in model.named_modules() if type(m) in (SEModule, SqueezeExcite, BatchNormAct2d)}
    assert blocks and blocks <= called
    batches = [torch.randn(4, 3, 64, 64)]
    kinds = {"l2": {}, "activation": {"calibration": batches, "compensate": True}}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        one_call = {k: _summary(surgeon.plan(model, 0.5, x, importance=k, **kw)) for k, kw in kinds.items()}
        for cls in (SEModule, SqueezeExcite, BatchNormAct2d):
            monkeypatch.delitem(registry._HANDLERS, cls)
        traced_through = {k: _summary(surgeon.plan(model, 0.5, x, importance=k, **kw)) for k, kw in kinds.items()}
    assert one_call == traced_through


def test_timm_se_module_with_a_norm_between_its_convs(monkeypatch):
    pytest.importorskip("timm")
    from timm.layers.squeeze_excite import SEModule

    load_optional()
    model = liven(SENet(SEModule(16, rd_channels=6, norm_layer=nn.BatchNorm2d)).eval(), X)
    called = [n.target for n in trace.trace(model, surgeon.util.Inputs((X,)))[0].graph.nodes if n.op == "call_module"]
    assert "se" in called and "se.bn" not in called
    slim, _ = roundtrip(model, X, 0.5)
    assert slim.se.bn.num_features == slim.se.fc1.out_channels == 3
    one_call = _summary(surgeon.plan(model, 0.5, X, importance="activation", calibration=[X], compensate=True))
    monkeypatch.delitem(registry._HANDLERS, SEModule)
    assert one_call == _summary(surgeon.plan(model, 0.5, X, importance="activation", calibration=[X], compensate=True))
