"""No stronger coupling than the graph needs: equal `chunk`s keep equal counts (not the same
indices), grouped convs narrow every group, and the selection under nested equal-count
constraints is the cheapest one (checked against brute force)."""
from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch
import torch.nn.functional as F
import torchvision
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

import surgeon
from surgeon.core.atoms import DepGraph
from surgeon.core.balance import remove_lowest
from surgeon.core.groups import Coupling
from util import liven, n_params, roundtrip


class Swap(nn.Module):
    """chunk → swap → cat: the halves need equal counts, nothing more."""

    def __init__(self) -> None:
        super().__init__()
        self.stem, self.head = nn.Conv2d(3, 16, 1), nn.Conv2d(16, 4, 1)

    def forward(self, x):
        a, b = self.stem(x).chunk(2, dim=1)
        return self.head(torch.cat([b, F.relu(a)], dim=1))


def test_chunks_keep_equal_counts_not_equal_indices():
    model = Swap()
    with torch.no_grad():  # weak: channels 0-3 of the first half, 12-15 of the second
        model.stem.weight[[0, 1, 2, 3, 12, 13, 14, 15]] *= 1e-3
        model.stem.bias[[0, 1, 2, 3, 12, 13, 14, 15]] *= 1e-3
        model.head.weight[:, [4, 5, 6, 7, 8, 9, 10, 11]] *= 1e-3  # (columns of the swapped cat)
    slim, report = roundtrip(model, torch.randn(2, 3, 4, 4))
    kept = [i for i in range(16) if any(torch.equal(model.stem.weight[i], w) for w in slim.stem.weight)]
    assert kept == [4, 5, 6, 7, 8, 9, 10, 11] and report.checked


def test_uneven_pieces_of_a_unit_are_frozen_and_nesting_is_required():
    dg = DepGraph()
    a = dg.space("a", 0, 8, active=True)
    dg.union(a[[3]], a[[4]])  # one unit across the boundary of two equal halves: 1 + 1, even
    dg.union(a[[6]], a[[7]])
    dg.union(a[[5]], a[[6]])  # a unit with 0 entries in the first half, 3 in the second: odd
    dg.balance(a.reshape(2, 4))
    root = dg.classes()
    frozen = np.unique(root[np.concatenate([atoms for atoms, _ in dg.frozen])])
    assert frozen.tolist() == [5]
    (rows,) = dg.blocks  # 3-4 is in both halves once: neutral; nothing removable is left in
    assert [r.tolist() for r in rows] == [[0, 1, 2], []]  # the second half, so none leaves


def test_overlapping_constraints_that_do_not_nest_couple_index_by_index():
    dg = DepGraph()
    a = dg.space("a", 0, 4, active=True)
    dg.balance(a.reshape(2, 2))  # [0, 1] | [2, 3]
    dg.balance(a[[0, 2]].reshape(2, 1))  # [0] | [2]: across the rows of the first
    root = dg.classes()
    assert root[0] == root[2] and len(dg.blocks) == 1


def _brute_force(units, frozen, scores, blocks, count, spaces):
    """The largest feasible removal count up to `count` and its least total score."""
    best = None
    for k in range(count, 0, -1):
        for chosen in itertools.combinations([u for u in units if not frozen[u]], k):
            gone = set(chosen)
            if any(len({sum(u in gone for u in row) for row in rows}) > 1 for rows in blocks):
                continue
            if any(set(s) <= gone for s in spaces):
                continue
            cost = sum(scores[u] for u in chosen)
            best = cost if best is None or cost < best else best
        if best is not None:
            return k, best
    return 0, 0.0


@settings(max_examples=60, deadline=None)
@given(st.data())
def test_selection_under_nested_constraints_is_the_cheapest(data):
    """Nested chunks of one space: `remove_lowest` finds the largest feasible count and, for
    it, the least total score (the brute force tries every subset)."""
    n = data.draw(st.sampled_from([4, 6, 8, 12]))
    dg = DepGraph()
    a = dg.space("a", 0, n, active=True)
    pieces = [a]
    for _ in range(data.draw(st.integers(0, 2))):
        piece = data.draw(st.sampled_from(pieces))
        rows = data.draw(st.sampled_from([r for r in (2, 3) if piece.size % r == 0] or [1]))
        if rows > 1:
            dg.balance(piece.reshape(rows, -1))
            pieces += list(piece.reshape(rows, -1))
    for i in data.draw(st.lists(st.integers(0, n - 1), max_size=2)):
        dg.freeze(a[[i]], "test")
    coupling = Coupling(dg)
    scores = np.asarray(data.draw(st.lists(st.floats(0, 1), min_size=coupling.n_units,
                                           max_size=coupling.n_units)))
    count = data.draw(st.integers(0, n))
    if 0 not in coupling.blocks:
        return
    got = remove_lowest(coupling.members[0], ~coupling.frozen, scores, coupling.blocks[0], count,
                        spaces=coupling.spaces_of(0))
    units = coupling.members[0].tolist()
    blocks = [[r.tolist() for r in rows] for rows in coupling.blocks[0]]
    k, cost = _brute_force(units, coupling.frozen, scores, blocks, min(count, len(units) - 1), [units])
    assert got.size == k and np.isclose(scores[got].sum(), cost)


class ResNeXtBlock(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Sequential(nn.Conv2d(3, 16, 1), nn.BatchNorm2d(16), nn.ReLU())
        self.b = nn.Sequential(nn.Conv2d(16, 16, 3, padding=1, groups=4), nn.BatchNorm2d(16), nn.ReLU())
        self.c = nn.Conv2d(16, 5, 1)

    def forward(self, x):
        return self.c(self.b(self.a(x)))


def test_grouped_conv_narrows_every_group():
    """Input index j of every group leaves together (the weight's input dimension is shared),
    outputs leave in equal numbers per group: the weight shrinks in both dimensions."""
    slim, report = roundtrip(ResNeXtBlock(), torch.randn(2, 3, 6, 6))
    b = slim.b[0]
    assert (b.groups, b.in_channels, b.out_channels) == (4, 8, 8) and b.weight.shape[:2] == (8, 2)
    assert len(report.checked) == 2


def test_functional_grouped_conv_keeps_its_literal_groups():
    class Functional(nn.Module):
        def __init__(self, groups: int) -> None:
            super().__init__()
            self.groups = groups
            self.a = nn.Conv2d(3, 8, 1)
            self.w = nn.Parameter(torch.randn(8, 8 // groups, 3, 3))
            self.c = nn.Conv2d(8, 2, 1)

        def forward(self, x):
            return self.c(F.conv2d(self.a(x), self.w, padding=1, groups=4 if self.groups == 4 else 8))

    slim, _ = roundtrip(Functional(4), torch.randn(1, 3, 5, 5))
    assert slim.w.shape == (4, 1, 3, 3)
    plan = surgeon.plan(Functional(8), 0.5, torch.randn(1, 3, 5, 5))  # depthwise: groups would shrink
    assert any("literal `groups`" in why for g in plan.groups for why in g.frozen_why)


def test_regnet_narrows_its_groups():
    """RegNet's grouped 3×3 convs keep their group count and narrow every group, as
    Torch-Pruning does (whole groups used to leave: 0.32 of the parameters kept)."""
    x = torch.randn(1, 3, 64, 64)
    model = liven(torchvision.models.regnet_x_400mf(), x)
    slim = surgeon.slim(model, 0.5, x)
    assert n_params(slim) / n_params(model) < 0.28
    conv = slim.trunk_output.block2[0].f.b[0]
    assert conv.groups == model.trunk_output.block2[0].f.b[0].groups
    assert surgeon.verify(model, slim, x).ok


@pytest.mark.parametrize("name", ["shufflenet_v2_x1_0"])
def test_shufflenet_stage_streams_lose_channels(name):
    """The chunk → branch → cat → channel-shuffle stream: the shuffle couples index j of its two
    halves, each chunk only counts. Stage 2's stream used to be one unit (nothing removed)."""
    x = torch.randn(1, 3, 64, 64)
    model = liven(getattr(torchvision.models, name)(), x)
    plan = surgeon.plan(model, 0.5, x)
    stream = next(r for g, r in zip(plan.groups, plan.removed) if g.spaces[0].startswith("stage2.0.branch1.2"))
    assert stream >= 20
    slim = plan.apply(model)
    assert n_params(slim) / n_params(model) < 0.41 and surgeon.verify(model, slim, x).ok
