"""Shape-only runs give a real run's shapes, raise a real run's errors, and leave the model as it was."""
from __future__ import annotations

import pytest
import torch
import torchvision
from torch import nn
from torch.nn.utils import parametrize

from surgeon.shapes import shape_run, shapes_only


def _state(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in model.state_dict().items()}


class Mixed(nn.Module):
    """Every kind of heavy layer, one rewriting `forward`, one with a hook."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, stride=2, padding=1)
        self.up = nn.ConvTranspose2d(8, 4, 2, stride=2)
        self.conv1d = nn.Conv1d(4, 6, 5)
        self.attn = nn.MultiheadAttention(6, 2, batch_first=True)
        self.bilinear = nn.Bilinear(6, 6, 3)
        self.hooked = nn.Linear(3, 5)
        self.hooked.register_forward_hook(lambda m, i, o: o * 2)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        y = self.up(self.conv(x).relu())
        seq = self.conv1d(y.flatten(2)).transpose(1, 2)
        a, w = self.attn(seq, seq, seq)
        return self.hooked(self.bilinear(a, a)), w


@pytest.mark.parametrize("build, x", [
    (Mixed, torch.randn(2, 3, 16, 16)),
    (lambda: torchvision.models.resnet18(), torch.randn(1, 3, 64, 64)),
    (lambda: torchvision.models.VisionTransformer(32, 16, num_layers=2, num_heads=2, hidden_dim=8, mlp_dim=16),
     torch.randn(1, 3, 32, 32)),
])
def test_shapes_dtypes_and_strides_match_a_real_run(build, x):
    torch.manual_seed(0)
    model = build().eval()
    before, params = _state(model), list(model.parameters())
    with torch.no_grad():
        real = model(x)
        with shapes_only(model):
            fast = model(x)
    real, fast = (t if isinstance(t, tuple) else (t,) for t in (real, fast))
    assert [(t.shape, t.dtype, t.stride()) for t in fast] == [(t.shape, t.dtype, t.stride()) for t in real]
    assert not any("forward" in vars(m) for m in model.modules())
    assert list(model.parameters()) == params and not any(p.is_meta for p in params)
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())


def test_heavy_layers_skip_the_arithmetic_and_others_run():
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 6 * 6, 2)).eval()
    x = torch.randn(1, 3, 8, 8)
    with torch.no_grad(), shapes_only(model):
        assert torch.count_nonzero(model(x)) == 0  # zeros from the heavy layers, shapes kept
        assert torch.count_nonzero(model[1](x)) == 0  # the ReLU says its shape too
        assert torch.equal(model[2](x), x.flatten(1))  # the Flatten is real
    assert torch.count_nonzero(model(x)) > 0


QUICK_CASES = [
    (nn.Conv2d(4, 6, 3, stride=2, padding=1, dilation=2, groups=2), (1, 4, 9, 11)),
    (nn.Conv2d(4, 6, 3, padding="same", padding_mode="reflect"), (2, 4, 7, 7)),
    (nn.Conv1d(4, 6, 5, padding="valid", bias=False), (3, 4, 9)),
    (nn.Conv3d(2, 3, (1, 2, 3), stride=(1, 2, 1)), (1, 2, 4, 5, 6)),
    (nn.Linear(5, 3), (2, 7, 5)),
    (nn.Linear(5, 3), (5,)),
    (nn.BatchNorm1d(4), (3, 4, 6)),
    (nn.BatchNorm2d(4), (3, 4, 5, 6)),
    (nn.SiLU(), (2, 3, 4)),
    (nn.ReLU(inplace=True), (2, 3)),
]


@pytest.mark.parametrize("layer, shape", QUICK_CASES, ids=lambda v: type(v).__name__ if isinstance(v, nn.Module) else str(v))
def test_quick_paths_give_a_real_runs_shape_dtype_and_strides(layer, shape):
    x = torch.randn(shape)
    layer.eval()
    with torch.no_grad():
        real = layer(x.clone())
        with shapes_only(layer):
            fast = layer(x.clone())
    assert (fast.shape, fast.dtype, fast.stride()) == (real.shape, real.dtype, real.stride())
    assert torch.count_nonzero(fast) == 0 or getattr(layer, "inplace", False)


@pytest.mark.parametrize("layer, shape", [
    (nn.Conv2d(4, 6, 3), (1, 5, 8, 8)),  # input width
    (nn.Conv2d(4, 6, 5), (1, 4, 3, 3)),  # kernel larger than the input
    (nn.Conv2d(4, 6, 3), (4, 8, 8)),  # unbatched: left to the kernel
    (nn.Conv2d(4, 6, 3, groups=2), (1, 4, 8, 8)),  # outputs no longer split into the groups
    (nn.Conv1d(2, 2, 5, padding=4, padding_mode="reflect"), (1, 2, 3)),  # padding wider than the input
    (nn.Linear(5, 3), (2, 4)),
    (nn.BatchNorm2d(4), (2, 5, 3, 3)),
    (nn.BatchNorm2d(4), (2, 4, 3)),  # wrong rank
])
def test_quick_paths_decline_what_the_kernel_must_judge(layer, shape):
    layer.eval()
    if isinstance(layer, nn.Conv2d) and layer.groups == 2:
        layer.weight = nn.Parameter(layer.weight[:5])
    x = torch.randn(shape)
    try:
        real = layer(x)
    except (RuntimeError, ValueError) as e:
        with shapes_only(layer), pytest.raises(type(e)) as fast:
            layer(x)
        assert str(fast.value) == str(e)
    else:
        with shapes_only(layer), torch.no_grad():
            assert layer(x).shape == real.shape


def test_zeros_are_handed_on_but_the_callers_tensors_never_are():
    class Pair(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv, self.bn = nn.Conv2d(3, 3, 1), nn.BatchNorm2d(3)

        def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
            c = self.conv(x)
            return c, self.bn(c), self.bn(x)

    model, x = Pair().eval(), torch.randn(1, 3, 4, 4)
    before = x.clone()
    with torch.no_grad(), shapes_only(model):
        c, bn_c, bn_x = model(x)
    assert bn_c is c  # zeros this run made: no copy
    assert bn_x is not x and torch.count_nonzero(bn_x) == 0 and torch.equal(x, before)


def _narrowed(layer: nn.Module, attr: str, index: tuple) -> nn.Module:
    """`layer` with parameter `attr` cut to `index`: the inconsistent layer a bad rebuild makes."""
    owner, _, name = attr.rpartition(".")
    target = layer.get_submodule(owner)
    setattr(target, name, nn.Parameter(getattr(target, name).detach()[index]))
    return layer


INCONSISTENT = {
    "conv bias": (lambda: _narrowed(nn.Conv2d(4, 6, 3), "bias", slice(5)), (1, 4, 5, 5)),
    "conv groups": (lambda: _narrowed(nn.Conv2d(4, 6, 3, groups=2), "weight", slice(5)), (1, 4, 5, 5)),
    "conv inputs": (lambda: _narrowed(nn.Conv2d(4, 6, 3, groups=2), "weight", (slice(None), slice(1))), (1, 4, 5, 5)),
    "unbatched conv bias": (lambda: _narrowed(nn.Conv1d(4, 6, 3), "bias", slice(5)), (4, 9)),
    "transposed conv groups": (lambda: _narrowed(nn.ConvTranspose2d(4, 6, 3, groups=2), "weight", slice(3)), (1, 4, 5, 5)),
    "transposed conv bias": (lambda: _narrowed(nn.ConvTranspose2d(4, 6, 3), "bias", slice(5)), (1, 4, 5, 5)),
    "transposed conv inputs": (lambda: nn.ConvTranspose2d(4, 6, 3), (1, 5, 5, 5)),
    "linear bias": (lambda: _narrowed(nn.Linear(4, 6), "bias", slice(5)), (2, 4)),
    "batch norm weight": (lambda: _narrowed(nn.BatchNorm2d(4), "weight", slice(3)), (1, 4, 3, 3)),
    "attention in_proj": (lambda: _narrowed(nn.MultiheadAttention(8, 2, batch_first=True), "in_proj_weight", slice(20)), (1, 3, 8)),
    "attention out_proj": (lambda: _narrowed(nn.MultiheadAttention(8, 2, batch_first=True), "out_proj.weight",
                                             (slice(None), slice(6))), (1, 3, 8)),
}


@pytest.mark.parametrize("name", INCONSISTENT)
def test_an_inconsistent_layer_fails_the_shape_only_run_as_it_fails_for_real(name):
    """The check after a rebuild runs shape-only: it must catch every layer whose weights no
    longer fit together, although meta kernels check little (a conv's bias, a transposed conv's
    widths and groups)."""
    build, shape = INCONSISTENT[name]
    layer, x = build().eval(), torch.randn(shape)

    def call() -> torch.Tensor:
        with torch.no_grad():
            return layer(x, x, x, need_weights=False) if isinstance(layer, nn.MultiheadAttention) else layer(x)

    with pytest.raises((RuntimeError, ValueError, AssertionError)) as real:
        call()
    with shapes_only(layer), pytest.raises(type(real.value)) as fast:
        call()
    assert str(fast.value) == str(real.value)


def test_a_width_mismatch_raises_the_real_error():
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.Conv2d(5, 2, 1))
    with pytest.raises(RuntimeError) as real:
        model(torch.randn(1, 3, 8, 8))
    with shapes_only(model), pytest.raises(RuntimeError) as fast:
        model(torch.randn(1, 3, 8, 8))
    assert str(fast.value) == str(real.value)
    assert not any("forward" in vars(m) for m in model.modules())


def test_a_layer_whose_meta_run_fails_runs_for_real():
    class Scaled(nn.Module):  # reads a value: fails on meta
        def forward(self, w: torch.Tensor) -> torch.Tensor:
            return w / w.abs().max().item()

    model = nn.Linear(4, 3).eval()
    parametrize.register_parametrization(model, "weight", Scaled())
    x = torch.randn(4, 2).t()  # not contiguous: no quick path, so tried on meta first
    with torch.no_grad():
        real = model(x)
        with shapes_only(model):
            assert "forward" in vars(model)
            assert torch.equal(model(x), real)


def test_shape_run_repeats_for_real_what_fails_on_zeros():
    model = nn.Linear(4, 3)
    seen = []

    def run() -> torch.Size:
        y = model(torch.randn(2, 4))
        seen.append(bool(y.abs().sum()))
        if not seen[-1]:
            raise ValueError("this forward reads values")
        return y.shape

    assert shape_run(model, run) == (2, 3) and seen == [False, True]

    def broken() -> None:
        model(torch.randn(2, 5))

    with pytest.raises(RuntimeError, match="shapes cannot be multiplied"):
        shape_run(model, broken)
