"""Random valid architectures for the property tests: a `Spec` (plain data, printable, so a
failing example can be pasted into a regular test) and the module built from it.

A spec is a stem, a list of blocks and a head over a 1×3×8×8 image. Blocks: conv → norm →
activation (plain, grouped, depthwise), residual adds, concatenations, squeeze-excitation gates,
chunk → branch → cat → channel shuffle, literal splits, one conv used twice, a downsampling, and a
token block (LayerNorm, attention — PyTorch's or timm's — and an MLP). Norms of every kind:
BatchNorm, GroupNorm, InstanceNorm, LayerNorm over channels, FrozenBatchNorm2d,
LocalResponseNorm. Heads: global pooling or flatten → Linear.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from hypothesis import strategies as st
from timm.layers import Attention
from torch import nn
from torchvision.ops.misc import FrozenBatchNorm2d

NORMS = ("bn", "gn", "in", "ln", "frozen", "lrn", "none")
ACTS = {"relu": nn.ReLU, "gelu": nn.GELU, "silu": nn.SiLU, "hardswish": nn.Hardswish, "none": nn.Identity}


@dataclass(frozen=True)
class Spec:
    """A model: `blocks` are (kind, *params) tuples; `head` is "pool" or "flatten"."""

    stem: int
    blocks: tuple[tuple, ...]
    head: str
    seed: int


class LayerNorm2d(nn.LayerNorm):
    """LayerNorm over the channels of an image (ConvNeXt's): removal there is inexact."""

    def forward(self, x):
        return super().forward(x.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)


def norm(kind: str, c: int) -> nn.Module:
    if kind == "bn":
        m = nn.BatchNorm2d(c)
        m.running_mean.normal_(0, 0.2)
        m.running_var.uniform_(0.5, 2)
        return m
    if kind == "frozen":
        m = FrozenBatchNorm2d(c)
        m.weight.uniform_(0.5, 1.5)
        m.running_var.uniform_(0.5, 2)
        return m
    return {"gn": lambda: nn.GroupNorm(2 if c % 2 == 0 else 1, c), "in": lambda: nn.InstanceNorm2d(c, affine=True),
            "ln": lambda: LayerNorm2d(c), "lrn": lambda: nn.LocalResponseNorm(3),
            "none": nn.Identity}[kind]()


class ConvNorm(nn.Sequential):
    def __init__(self, cin: int, cout: int, k: int = 3, groups: int = 1, norm_kind: str = "bn",
                 act: str = "relu", stride: int = 1) -> None:
        super().__init__(nn.Conv2d(cin, cout, k, stride, k // 2, groups=groups, bias=norm_kind == "none"),
                         norm(norm_kind, cout), ACTS[act]())


class Residual(nn.Module):
    def __init__(self, c: int, mid: int, norm_kind: str) -> None:
        super().__init__()
        self.a, self.b = ConvNorm(c, mid, 1, norm_kind=norm_kind), ConvNorm(mid, c, 3, norm_kind=norm_kind, act="none")

    def forward(self, x):
        return F.relu(x + self.b(self.a(x)))


class Concat(nn.Module):
    def __init__(self, c: int, left: int, right: int, norm_kind: str) -> None:
        super().__init__()
        self.l, self.r = ConvNorm(c, left, 1, norm_kind=norm_kind), ConvNorm(c, right, 3, norm_kind=norm_kind)

    def forward(self, x):
        return torch.cat([self.l(x), self.r(x)], dim=1)


class SE(nn.Module):
    def __init__(self, c: int, mid: int) -> None:
        super().__init__()
        self.fc1, self.fc2 = nn.Conv2d(c, mid, 1), nn.Conv2d(mid, c, 1)

    def forward(self, x):
        return x * torch.sigmoid(self.fc2(F.relu(self.fc1(x.mean((2, 3), keepdim=True)))))


class Shuffle(nn.Module):
    """ShuffleNet-V2's unit: chunk, one half through a branch, cat, channel shuffle."""

    def __init__(self, c: int, norm_kind: str, module_shuffle: bool) -> None:
        super().__init__()
        h = c // 2
        self.branch = nn.Sequential(ConvNorm(h, h, 1, norm_kind=norm_kind), ConvNorm(h, h, 3, groups=h, act="none"))
        self.shuffle = nn.ChannelShuffle(2) if module_shuffle else None

    def forward(self, x):
        a, b = x.chunk(2, dim=1)
        x = torch.cat([a, self.branch(b)], dim=1)
        if self.shuffle is not None:
            return self.shuffle(x)
        n, c, h, w = x.size()
        return x.view(n, 2, c // 2, h, w).transpose(1, 2).contiguous().view(n, -1, h, w)


class Split(nn.Module):
    """A split with a literal size: those channels are kept."""

    def __init__(self, c: int) -> None:
        super().__init__()
        self.size, self.conv = c // 2, nn.Conv2d(c // 2, c - c // 2, 1)

    def forward(self, x):
        a, b = torch.split(x, [self.size, x.shape[1] - self.size], dim=1)
        return torch.cat([self.conv(a), b], dim=1)


class Twice(nn.Module):
    def __init__(self, c: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(c, c, 3, padding=1)

    def forward(self, x):
        return self.conv(F.relu(self.conv(x)))


class Tokens(nn.Module):
    """Pre-norm transformer block on the H·W tokens of an image."""

    def __init__(self, c: int, heads: int, mlp: int, timm_attention: bool) -> None:
        super().__init__()
        self.n1, self.n2 = nn.LayerNorm(c), nn.LayerNorm(c)
        self.attn = Attention(c, heads, qkv_bias=True) if timm_attention else nn.MultiheadAttention(c, heads, batch_first=True)
        self.fc1, self.fc2 = nn.Linear(c, mlp), nn.Linear(mlp, c)

    def forward(self, x):
        n, c, h, w = x.shape
        t = x.flatten(2).transpose(1, 2)
        y = self.n1(t)
        t = t + (self.attn(y) if isinstance(self.attn, Attention) else self.attn(y, y, y, need_weights=False)[0])
        t = t + self.fc2(F.gelu(self.fc1(self.n2(t))))
        return t.transpose(1, 2).reshape(n, c, h, w)


class Net(nn.Module):
    def __init__(self, spec: Spec, classes: int = 3) -> None:
        super().__init__()
        torch.manual_seed(spec.seed)
        with torch.no_grad():
            self.stem = ConvNorm(3, spec.stem)
            blocks, c = [], spec.stem
            for kind, *p in spec.blocks:
                block, c = _block(kind, c, *p)
                blocks.append(block)
            self.blocks = nn.Sequential(*blocks)
        self.flatten = spec.head == "flatten"
        self.head = nn.Linear(c * 4 if self.flatten else c, classes)

    def forward(self, x):
        x = self.blocks(self.stem(x))
        x = F.adaptive_avg_pool2d(x, 2).flatten(1) if self.flatten else x.mean((2, 3))
        return self.head(x)


def _block(kind: str, c: int, *p) -> tuple[nn.Module, int]:
    """The block `kind` on `c` channels, and the channels it outputs."""
    if kind == "conv":
        cout, k, groups, norm_kind, act = p
        return ConvNorm(c, cout, k, groups, norm_kind, act), cout
    if kind == "residual":
        return Residual(c, *p), c
    if kind == "concat":
        return Concat(c, *p), p[0] + p[1]
    if kind == "se":
        return SE(c, *p), c
    if kind == "shuffle":
        return Shuffle(c, *p), c
    if kind == "split":
        return Split(c), c
    if kind == "twice":
        return Twice(c), c
    if kind == "down":
        return (nn.MaxPool2d(2) if p[0] == "max" else ConvNorm(c, c, 3, stride=2)), c
    return Tokens(c, *p), c


WIDTHS = (2, 4, 6, 8, 12)


@st.composite
def blocks(draw: st.DrawFn, c: int) -> tuple[tuple, int]:
    """One block spec on `c` channels, and its output width."""
    kinds = ["conv", "residual", "concat", "se", "twice", "down", "split"]
    kinds += ["shuffle"] if c % 2 == 0 else []
    kinds += ["tokens"] if c % 2 == 0 else []
    kind = draw(st.sampled_from(kinds))
    norm_kind = draw(st.sampled_from(NORMS))
    if kind == "conv":
        cout = draw(st.sampled_from(WIDTHS))
        groups = draw(st.sampled_from([g for g in (1, 2, 3, c) if c % g == 0 and cout % g == 0]))
        spec = (kind, cout, draw(st.sampled_from([1, 3])), groups, norm_kind, draw(st.sampled_from(sorted(ACTS))))
        return spec, cout
    if kind == "residual":
        return (kind, draw(st.sampled_from(WIDTHS)), norm_kind), c
    if kind == "concat":
        left, right = draw(st.sampled_from(WIDTHS)), draw(st.sampled_from(WIDTHS))
        return (kind, left, right, norm_kind), left + right
    if kind == "se":
        return (kind, draw(st.sampled_from(WIDTHS))), c
    if kind == "shuffle":
        return (kind, norm_kind, draw(st.booleans())), c
    if kind == "down":
        return (kind, draw(st.sampled_from(["max", "conv"]))), c
    if kind == "tokens":
        return (kind, draw(st.sampled_from([h for h in (1, 2) if c % h == 0])), draw(st.sampled_from(WIDTHS)),
                draw(st.booleans())), c
    return (kind,), c


@st.composite
def specs(draw: st.DrawFn) -> Spec:
    """A random architecture: a stem, up to five blocks (at most two downsamplings), a head."""
    c = draw(st.sampled_from(WIDTHS[1:]))
    stem, found, downs = c, [], 0
    for _ in range(draw(st.integers(1, 5))):
        block, c = draw(blocks(c))
        if block[0] == "down" and downs == 2:
            continue
        downs += block[0] == "down"
        found.append(block)
    return Spec(stem, tuple(found), draw(st.sampled_from(["pool", "flatten"])), draw(st.integers(0, 2**16)))
