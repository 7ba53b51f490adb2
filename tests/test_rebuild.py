"""Rebuild: slicing, tied tensors, undo, gradient state."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import surgeon
from surgeon.core.rebuild import clone, rebuild
from util import same_state, state


class Tied(nn.Module):
    """Embedding and output head share one weight; the embedding width is prunable."""

    def __init__(self) -> None:
        super().__init__()
        self.emb = nn.Embedding(40, 16)
        self.fc1, self.fc2 = nn.Linear(16, 32), nn.Linear(32, 16)
        self.head = nn.Linear(16, 40, bias=False)
        self.head.weight = self.emb.weight

    def forward(self, ids):
        x = self.emb(ids)
        return self.head(x + self.fc2(F.relu(self.fc1(x))))


def test_tied_weight_stays_tied():
    model = Tied()
    ids = torch.randint(0, 40, (2, 5))
    slim = surgeon.slim(model, 0.5, ids)
    assert slim.head.weight is slim.emb.weight
    assert slim.emb.weight.shape == (40, 8) and slim.emb.embedding_dim == 8
    assert slim(ids).shape == (2, 5, 40)
    assert surgeon.verify(model, slim).ok


def test_undo_restores_bit_identical():
    model = nn.Sequential(nn.Conv2d(3, 8, 3), nn.BatchNorm2d(8), nn.ReLU(), nn.Conv2d(8, 4, 1))
    before = state(model)
    plan = surgeon.plan(model, 0.5, torch.randn(1, 3, 6, 6))
    undo = rebuild(model, plan)
    assert model[0].out_channels == 4 and model[1].num_features == 4
    undo()
    assert same_state(model, before)
    assert model[0].out_channels == 8 and model[1].num_features == 8


def test_inplace_failure_restores_model(monkeypatch):
    model = nn.Sequential(nn.Conv2d(3, 8, 3), nn.BatchNorm2d(8), nn.ReLU(), nn.Conv2d(8, 4, 1))
    before = state(model)

    def broken(module, sizes):
        raise RuntimeError("resizer exploded")

    monkeypatch.setitem(surgeon.ops.registry._RESIZERS, nn.BatchNorm2d, broken)
    with pytest.raises(surgeon.SurgeonError, match="unchanged"):
        surgeon.slim(model, 0.5, torch.randn(1, 3, 6, 6), inplace=True)
    assert same_state(model, before) and model[0].out_channels == 8


def test_clone_keeps_grads():
    model = nn.Linear(3, 2)
    model(torch.randn(4, 3)).sum().backward()
    twin = clone(model)
    assert torch.equal(twin.weight.grad, model.weight.grad)
    assert twin.weight.grad is not model.weight.grad
