"""One round trip per handler family on small hand-built models: prune, rebuild, forward, shape,
mask-equivalence."""
from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

import surgeon
from util import n_params, roundtrip


def cbr(i: int, o: int, **kw) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(i, o, 3, padding=1, bias=False, **kw), nn.BatchNorm2d(o), nn.ReLU())


class Residual(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.stem = cbr(3, 16)
        self.a, self.b = cbr(16, 32), nn.Sequential(nn.Conv2d(32, 16, 3, padding=1), nn.BatchNorm2d(16))
        self.head = nn.Conv2d(16, 5, 1)

    def forward(self, x):
        x = self.stem(x)
        x = F.relu(x + self.b(self.a(x)))
        x = x - self.b(self.a(x)) * 0.5
        return self.head(x).mean((2, 3))


class Concat(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.l, self.r = cbr(3, 8), cbr(3, 12)
        self.out = nn.Conv2d(20, 4, 1)

    def forward(self, x):
        return self.out(torch.cat([self.l(x), self.r(x)], dim=1))


class Grouped(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.stem = cbr(3, 16)
        self.group = cbr(16, 32, groups=4)
        self.dw = nn.Sequential(nn.Conv2d(32, 32, 3, padding=1, groups=32), nn.BatchNorm2d(32), nn.ReLU6())
        self.mult = nn.Conv2d(32, 64, 3, padding=1, groups=32)
        self.head = nn.Conv2d(64, 3, 1)

    def forward(self, x):
        return self.head(self.mult(self.dw(self.group(self.stem(x)))))


class SE(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.stem = cbr(3, 16)
        self.fc1, self.fc2 = nn.Conv2d(16, 4, 1), nn.Conv2d(4, 16, 1)
        self.head = nn.Linear(16, 3)

    def forward(self, x):
        x = self.stem(x)
        gate = torch.sigmoid(self.fc2(F.silu(self.fc1(x.mean((2, 3), keepdim=True)))))
        x = x * gate
        return self.head(F.adaptive_avg_pool2d(x, 1).flatten(1))


class FlattenLinear(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Sequential(cbr(3, 8), nn.MaxPool2d(2), cbr(8, 16), nn.AdaptiveAvgPool2d(3))
        self.classifier = nn.Sequential(nn.Linear(16 * 9, 32), nn.ReLU(), nn.Dropout(), nn.Linear(32, 10))

    def forward(self, x):
        return self.classifier(torch.flatten(self.features(x), 1))


class Shuffle(nn.Module):
    def __init__(self, module_shuffle: bool) -> None:
        super().__init__()
        self.stem = cbr(3, 16)
        self.branch = cbr(8, 8)
        self.shuffle = nn.ChannelShuffle(2) if module_shuffle else None
        self.head = nn.Conv2d(16, 4, 1)

    def forward(self, x):
        x = self.stem(x)
        a, b = x.chunk(2, dim=1)
        x = torch.cat((a, self.branch(b)), dim=1)
        if self.shuffle is not None:
            x = self.shuffle(x)
        else:
            n, c, h, w = x.size()
            x = x.view(n, 2, c // 2, h, w).transpose(1, 2).contiguous().view(n, -1, h, w)
        return self.head(x)


class SharedAndTwice(nn.Module):
    """One input feeds two branches; one conv is called twice."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = cbr(3, 16)
        self.shared = nn.Conv2d(16, 16, 3, padding=1)
        self.left, self.right = nn.Conv2d(16, 8, 1), nn.Conv2d(16, 8, 1)
        self.head = nn.Conv2d(8, 2, 1)

    def forward(self, x):
        x = self.stem(x)
        y = self.shared(F.relu(self.shared(x)))
        return self.head(self.left(x) + self.right(y))


class Norms(nn.Module):
    """GroupNorm (whole groups), InstanceNorm, PReLU and a layer-scale parameter."""

    def __init__(self) -> None:
        super().__init__()
        self.c1, self.gn = nn.Conv2d(3, 16, 3, padding=1), nn.GroupNorm(4, 16)
        self.c2, self.inorm = nn.Conv2d(16, 12, 3, padding=1), nn.InstanceNorm2d(12, affine=True)
        self.c3, self.inorm2 = nn.Conv2d(12, 12, 1), nn.InstanceNorm2d(12)
        self.act = nn.PReLU(12)
        self.gamma = nn.Parameter(torch.rand(12, 1, 1))
        self.head = nn.Conv2d(12, 3, 1)

    def forward(self, x):
        x = self.inorm(self.c2(F.relu(self.gn(self.c1(x)))))
        return self.head(self.gamma * self.act(self.inorm2(self.c3(x))))


class OtherDims(nn.Module):
    """Conv1d, Conv3d, ConvTranspose2d, BatchNorm1d."""

    def __init__(self) -> None:
        super().__init__()
        self.c1, self.b1 = nn.Conv1d(3, 8, 3), nn.BatchNorm1d(8)
        self.c1b = nn.Conv1d(8, 4, 1)
        self.c3 = nn.Conv3d(1, 8, 3, padding=1)
        self.c3b = nn.Conv3d(8, 2, 1)
        self.up = nn.ConvTranspose2d(3, 8, 2, stride=2)
        self.upb = nn.Conv2d(8, 2, 1)

    def forward(self, x):
        a = self.c1b(F.relu(self.b1(self.c1(x.flatten(2))))).mean(-1)
        b = self.c3b(self.c3(x.unsqueeze(1))).mean((2, 3, 4))
        c = self.upb(self.up(x)).mean((2, 3))
        return torch.cat([a, b, c], 1)


class Functional(nn.Module):
    """Parameters used directly through F.conv2d / F.linear."""

    def __init__(self) -> None:
        super().__init__()
        self.w1 = nn.Parameter(torch.randn(16, 3, 3, 3) * 0.2)
        self.b1 = nn.Parameter(torch.randn(16) * 0.1)
        self.w2 = nn.Parameter(torch.randn(10, 16) * 0.2)

    def forward(self, x):
        x = F.relu(F.conv2d(x, self.w1, self.b1, padding=1)).mean((2, 3))
        return F.linear(x, self.w2)


class Tokens(nn.Module):
    """Embedding → Linear MLP with matmul and a literal-shaped reshape."""

    def __init__(self) -> None:
        super().__init__()
        self.emb = nn.Embedding(50, 16)
        self.fc1, self.fc2 = nn.Linear(16, 32), nn.Linear(32, 16)
        self.q, self.k = nn.Linear(16, 8), nn.Linear(16, 8)
        self.out = nn.Linear(16, 4)

    def forward(self, ids):
        x = self.emb(ids)
        x = x + self.fc2(F.gelu(self.fc1(x)))
        att = self.q(x) @ self.k(x).transpose(-2, -1)
        x = att.softmax(-1) @ x
        return self.out(x)


CASES = {
    "residual": (Residual, lambda: torch.randn(2, 3, 8, 8)),
    "concat": (Concat, lambda: torch.randn(2, 3, 8, 8)),
    "grouped_depthwise": (Grouped, lambda: torch.randn(2, 3, 8, 8)),
    "squeeze_excitation": (SE, lambda: torch.randn(2, 3, 8, 8)),
    "flatten_linear": (FlattenLinear, lambda: torch.randn(2, 3, 12, 12)),
    "shuffle_view": (lambda: Shuffle(False), lambda: torch.randn(2, 3, 8, 8)),
    "shuffle_module": (lambda: Shuffle(True), lambda: torch.randn(2, 3, 8, 8)),
    "shared_and_twice": (SharedAndTwice, lambda: torch.randn(2, 3, 8, 8)),
    "norms_prelu_layerscale": (Norms, lambda: torch.randn(2, 3, 8, 8)),
    "conv1d_3d_transpose": (OtherDims, lambda: torch.randn(2, 3, 6, 6)),
    "functional": (Functional, lambda: torch.randn(2, 3, 8, 8)),
    "tokens": (Tokens, lambda: torch.randint(0, 50, (2, 7))),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_roundtrip(case):
    make, inputs = CASES[case]
    model = make()
    slim, report = roundtrip(model, inputs())
    assert n_params(slim) < n_params(model)
    assert report.checked, "nothing was pruned"


def test_grouped_conv_narrows_every_group_depthwise_loses_whole_groups():
    slim, _ = roundtrip(Grouped(), torch.randn(2, 3, 8, 8))
    assert slim.group[0].groups == 4 and slim.group[0].out_channels == 16 and slim.group[0].in_channels == 8
    assert slim.dw[0].groups == slim.dw[0].in_channels == slim.dw[0].out_channels
    assert slim.mult.groups == slim.mult.in_channels and slim.mult.out_channels == 2 * slim.mult.groups


def test_groupnorm_removes_whole_groups():
    slim, _ = roundtrip(Norms(), torch.randn(2, 3, 8, 8))
    assert slim.gn.num_groups == 2 and slim.gn.num_channels == 8
    assert slim.inorm2.num_features == slim.c3.out_channels


def test_flatten_linear_drops_hw_features_per_channel():
    slim, _ = roundtrip(FlattenLinear(), torch.randn(2, 3, 12, 12))
    assert slim.classifier[0].in_features == slim.features[2][0].out_channels * 9


def test_concat_offsets():
    slim, _ = roundtrip(Concat(), torch.randn(2, 3, 8, 8))
    assert slim.out.in_channels == slim.l[0].out_channels + slim.r[0].out_channels == 4 + 6


def test_layernorm_over_channels_is_inexact():
    class LN(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.a, self.ln, self.b = nn.Linear(8, 16), nn.LayerNorm(16), nn.Linear(16, 2)

        def forward(self, x):
            return self.b(self.ln(self.a(x)))

    model = LN()
    plan = surgeon.plan(model, 0.5, torch.randn(3, 8))
    (group,) = [g for g, r in zip(plan.groups, plan.removed) if r]
    assert not group.exact and "LayerNorm" in group.inexact_why[0]
    slim = plan.apply(model)
    report = surgeon.verify(model, slim, torch.randn(3, 8), plan=plan)
    assert report.ok and report.unchecked and not report.checked
    assert slim.ln.normalized_shape == (8,)


def test_output_space_is_never_pruned():
    class ConvHead(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.a, self.b = cbr(3, 8), nn.Conv2d(8, 10, 1)

        def forward(self, x):
            return self.b(self.a(x))

    slim, _ = roundtrip(ConvHead(), torch.randn(1, 3, 8, 8))
    assert slim.b.out_channels == 10 and slim.a[0].out_channels == 4


def test_unknown_op_freezes_with_reason():
    class Cumsum(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.a, self.b, self.c = nn.Conv2d(3, 8, 1), nn.Conv2d(8, 8, 1), nn.Conv2d(8, 2, 1)

        def forward(self, x):
            return self.c(torch.cumsum(self.a(x), dim=1) + self.b(self.a(x)))

    plan = surgeon.plan(Cumsum(), 0.5, torch.randn(1, 3, 4, 4))
    frozen = [g for g in plan.groups if g.frozen_units == g.units and g.units == 8]
    assert frozen and any("cumsum" in why and "no handler" in why for g in frozen for why in g.frozen_why)


def test_literal_reshape_freezes_channels():
    class Literal(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.a, self.b = nn.Conv2d(3, 8, 1), nn.Linear(8 * 16, 2)

        def forward(self, x):
            return self.b(self.a(x).reshape(x.shape[0], 8 * 16))

    plan = surgeon.plan(Literal(), 0.5, torch.randn(1, 3, 4, 4))
    assert sum(plan.removed) == 0
    assert "literal" in plan.groups[0].frozen_why[0]


def test_chunk_and_shuffle_keep_halves_equal():
    slim, _ = roundtrip(Shuffle(False), torch.randn(2, 3, 8, 8))
    assert slim.stem[0].out_channels % 2 == 0
    assert slim.branch[0].in_channels == slim.stem[0].out_channels // 2


def test_size_read_from_another_tensor_keeps_counts_equal():
    """MaxViT-style: the output is reshaped to the *input's* width read from `x.shape`."""

    class SizedFrom(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.stem, self.inner, self.out = nn.Linear(4, 8), nn.Linear(8, 8), nn.Linear(8, 2)

        def forward(self, x):
            x = self.stem(x)
            b, n, d = x.shape
            y = self.inner(x).reshape(b, n, 2, 4).reshape(b, n, d)
            return self.out(y + x)

    model = SizedFrom()
    slim, _ = roundtrip(model, torch.randn(2, 3, 4))
    assert slim.stem.out_features == slim.inner.out_features


def test_a_crashing_handler_is_a_bug_unless_strict_is_off(monkeypatch):
    from surgeon.ops import registry

    def broken(ctx):
        ctx.param("weight", 0, active=True)
        raise ValueError("cannot read this layout")

    monkeypatch.setitem(registry._HANDLERS, nn.BatchNorm2d, broken)
    model = Residual()
    with pytest.raises(surgeon.HandlerError, match="handler broken failed on node .*cannot read this layout"):
        surgeon.plan(model, 0.5, torch.randn(1, 3, 8, 8))
    with pytest.warns(UserWarning, match="handler broken failed"):
        plan = surgeon.plan(model, 0.5, torch.randn(1, 3, 8, 8), strict=False)
    reasons = [w for g in plan.groups for w in g.frozen_why]
    assert any("cannot read this layout" in w for w in reasons)
    slim = plan.apply(model)
    assert surgeon.verify(model, slim, torch.randn(1, 3, 8, 8), plan=plan).ok


def test_view_to_another_tensors_shape():
    class ViewAs(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.a, self.b, self.c = nn.Conv2d(3, 8, 1), nn.Conv2d(3, 8, 1), nn.Conv2d(8, 2, 1)

        def forward(self, x):
            y = self.a(x)
            return self.c(self.b(x).flatten(2).view(y.shape) + y)

    slim, _ = roundtrip(ViewAs(), torch.randn(1, 3, 4, 4))
    assert slim.a.out_channels == slim.b.out_channels == 4


def test_grouped_conv_transpose_loses_whole_groups():
    class Up(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.stem = nn.Conv2d(3, 8, 3, padding=1)
            self.up = nn.ConvTranspose2d(8, 12, 2, stride=2, groups=4)
            self.bn, self.head = nn.BatchNorm2d(12), nn.Conv2d(12, 2, 1)

        def forward(self, x):
            return self.head(F.relu(self.bn(self.up(F.relu(self.stem(x))))))

    model = Up()
    with torch.no_grad():
        model.bn.running_var.uniform_(0.5, 2)
        model.bn.running_mean.normal_()
    slim, report = roundtrip(model, torch.randn(2, 3, 8, 8))
    assert slim.up.groups == 2 and slim.up.in_channels == 4 and slim.up.out_channels == 6
    assert slim.stem.out_channels == 4 and slim.bn.num_features == 6 and report.checked


@pytest.mark.parametrize("lone", ["unlabelled entry", "other extent"])
def test_unsatisfiable_equal_counts_freeze_instead_of_looping(lone):
    """A dimension sized from another that has an unprunable index (a class token) or another
    extent cannot be matched index by index: both are frozen, once (this used to loop forever)."""
    from surgeon.core.atoms import DepGraph

    dg = DepGraph()
    a, b = dg.space("a", 0, 4, active=True), dg.space("b", 0, 5, active=True)
    other = np.concatenate([[-1], b[:3]]) if lone == "unlabelled entry" else b
    dg.same_count(a, other)
    root = dg.classes()
    frozen = np.concatenate([atoms for atoms, _ in dg.frozen])
    assert root.size == 9 and frozen.size >= 1 and not dg.counts


def test_normalize_is_exact_and_new_tensors_carry_no_channels():
    """Cosine attention's F.normalize passes channels (zeros add nothing to a norm); DropPath's
    `x.new_empty(...)` mask takes only the dtype from x, so it must not freeze x's channels."""
    class Cosine(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.a, self.b = nn.Linear(6, 8), nn.Linear(8, 3)

        def forward(self, x):
            h = F.normalize(F.relu(self.a(x)), dim=-1)
            keep = h.new_empty((h.shape[0], 1)).fill_(1.0)
            return self.b(h * keep)

    slim, report = roundtrip(Cosine(), torch.randn(4, 6))
    assert slim.a.out_features == 4 and report.checked
