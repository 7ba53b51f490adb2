"""Helpers shared by the handler and zoo tests: round trip, livened weights."""
from __future__ import annotations

import torch
from torch import nn

import surgeon


def n_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def state(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in model.state_dict().items()}


def same_state(model: nn.Module, saved: dict[str, torch.Tensor]) -> bool:
    now = model.state_dict()
    return now.keys() == saved.keys() and all(
        now[k].shape == v.shape and torch.equal(now[k], v) for k, v in saved.items()
    )


def roundtrip(model: nn.Module, x, ratio: float = 0.5, **kw) -> tuple[nn.Module, surgeon.Report]:
    """Slim, then check class, output shape, untouched original and mask-equivalence."""
    model.eval()
    before = state(model)
    inputs = x if isinstance(x, tuple) else (x,)
    with torch.no_grad():
        out = model(*inputs)
    slim = surgeon.slim(model, ratio, x, **kw)
    assert type(slim) is type(model)
    assert same_state(model, before), "slim modified the input model"
    with torch.no_grad():
        got = slim(*inputs)
    assert got.shape == out.shape
    report = surgeon.verify(model, slim)
    assert report.ok, report
    return slim, report


_NORMS = (nn.modules.batchnorm._NormBase, nn.GroupNorm, nn.LayerNorm)
_LAYER_SCALES = ("gamma", "layer_scale")  # timm LayerScale(2d) / ConvNeXt `gamma`, torchvision CNBlock


def liven(model: nn.Module, x: torch.Tensor) -> nn.Module:
    """Weights at a scale where every channel visibly affects the output: Kaiming-normal
    convs and linears, random norm affine parameters (zero-initialised ones included), layer
    scales of order one (not 1e-6), then BatchNorm statistics measured on random images."""
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, (nn.modules.conv._ConvNd, nn.Linear)):
                fan_in = m.weight[0].numel()
                m.weight.copy_(torch.randn(m.weight.shape, generator=g) * (2.0 / fan_in) ** 0.5)
                if m.bias is not None:
                    m.bias.copy_(torch.randn(m.bias.shape, generator=g) * 0.1)
            elif isinstance(m, _NORMS) and getattr(m, "weight", None) is not None:
                m.weight.copy_(torch.rand(m.weight.shape, generator=g) + 0.5)
                m.bias.copy_(torch.randn(m.bias.shape, generator=g) * 0.1)
        for name, p in model.named_parameters():
            if name.rpartition(".")[2] in _LAYER_SCALES:
                p.copy_(torch.rand(p.shape, generator=g) + 0.5)
    batch = x.repeat(4, 1, 1, 1) + 0.1 * torch.randn((4 * len(x), *x.shape[1:]), generator=g)
    return surgeon.recalibrate(model, [batch]).eval()
