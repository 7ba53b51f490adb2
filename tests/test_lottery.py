"""Tests for surgeon.lottery: snapshots, rewinding under masks, iterative magnitude pruning."""

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from surgeon import lottery, masks, schedule


def make_model(seed: int = 0, width: int = 16) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Conv2d(1, width, 3, padding=1), nn.BatchNorm2d(width), nn.ReLU(),
                         nn.Flatten(), nn.Linear(width * 16, 4))


def make_data():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(64, 1, 4, 4, generator=g)
    return x, (x.mean(dim=(1, 2, 3)) > 0).long() + 2 * (x[:, 0, 0, 0] > 0).long()


def train(model, data=None, steps=10):
    x, y = data or make_data()
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    model.train()
    for _ in range(steps):
        opt.zero_grad()
        F.cross_entropy(model(x), y).backward()
        opt.step()


def weights(model):
    return {n: m for n, m in model.named_modules() if isinstance(m, masks.DEFAULT_INCLUDE)}


def test_rewind_restores_survivors_bit_for_bit_and_keeps_masked_at_zero():
    model = make_model()
    start = lottery.snapshot(model)
    train(model)
    masks.prune(model, 0.7, scope="global")
    stored = masks.masks_of(model)
    lottery.rewind(model, start)
    for name, module in weights(model).items():
        init = start.states[0][f"{name}.weight"]
        mask = stored[name]
        assert torch.equal(module.weight[mask], init[mask])
        assert module.weight[~mask].abs().max() == 0
        assert torch.equal(module.bias, start.states[0][f"{name}.bias"])
    assert torch.equal(model[1].running_mean, start.states[0]["1.running_mean"])
    assert masks.masks_of(model).keys() == stored.keys()
    assert all(torch.equal(m, stored[n]) for n, m in masks.masks_of(model).items())


def test_snapshot_is_a_copy_and_late_rewinding_picks_the_step():
    model = make_model()
    snap = lottery.snapshot(model)
    train(model, steps=3)
    snap = lottery.snapshot(model, step=3, into=snap)
    early = model[0].weight.detach().clone()
    train(model, steps=5)
    assert snap.steps == (0, 3)
    assert not torch.equal(snap.states[0]["0.weight"], snap.states[3]["0.weight"])
    masks.prune(model, 0.5)
    lottery.rewind(model, snap, to_step=3, buffers=False)
    mask = model[0].weight_mask.bool()
    assert torch.equal(model[0].weight[mask], early[mask])
    assert not torch.equal(model[1].running_mean, snap.states[3]["1.running_mean"])


def test_rewind_to_another_initialisation_is_the_random_reinit_baseline():
    model = make_model(seed=0)
    train(model)
    masks.prune(model, 0.8, scope="global")
    other = lottery.snapshot(make_model(seed=1))
    lottery.rewind(model, other)
    mask = model[4].weight_mask.bool()
    assert torch.equal(model[4].weight[mask], other.states[0]["4.weight"][mask])


def test_rewind_rejects_snapshots_that_do_not_fit():
    model = make_model()
    with pytest.raises(lottery.RewindError, match=r"step 5.*\(0,\)"):
        lottery.rewind(model, lottery.snapshot(model), to_step=5)
    with pytest.raises(lottery.RewindError, match=r"0\.weight.*\(8, 1, 3, 3\)"):
        lottery.rewind(model, lottery.snapshot(make_model(width=8)))
    with pytest.raises(lottery.RewindError, match="-1"):
        lottery.snapshot(model, step=-1)


def test_imp_prunes_by_trained_magnitude_and_rewinds_to_init():
    model = make_model()
    start = lottery.snapshot(model)
    calls = []

    def train_and_count(m):
        calls.append(masks.report(m).sparsity)
        train(m)

    result = lottery.imp(model, 0.6, rate=0.3, train=train_and_count,
                         evaluate=lambda m: 0.5, progress=False)
    rounds = schedule.milestones(0.6, 0.3)
    assert len(calls) == len(rounds) == len(result.history.steps)
    assert calls[0] == 0 and calls[1:] == pytest.approx(list(rounds[:-1]), abs=1e-2)
    assert result.ticket is model
    assert masks.report(model).sparsity == pytest.approx(0.6, abs=1e-3)
    init = start.states[0]["0.weight"]
    mask = model[0].weight_mask.bool()
    assert torch.equal(model[0].weight[mask], init[mask])
    # masks come from trained weights: the init's own smallest weights are not what was cut
    by_init = init.abs().flatten().argsort()[: int((~mask).sum())]
    assert not torch.equal((~mask).flatten().nonzero().flatten().sort().values,
                           by_init.sort().values)
