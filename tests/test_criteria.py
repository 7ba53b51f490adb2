"""Data-aware importance: taylor, activation, fluctuation and user criteria on calibration data —
known answers on toys, real models stay mask-equivalent, the model is left untouched, bad data
is answered."""
from __future__ import annotations

import numpy as np
import pytest
import torch
import torchvision
from torch import nn
from torchvision.models.vision_transformer import VisionTransformer

import surgeon
from surgeon.core.calibrate import Stats
from tests.util import assert_unchanged, liven, snapshot, tiny_bert

DATA = ("taylor", "activation", "fluctuation")
X = torch.randn(2, 8)


class MLP(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc1, self.fc2 = nn.Linear(8, 6), nn.Linear(6, 3)

    def forward(self, x):
        return self.fc2(torch.relu(self.fc1(x)))


def batches(n: int = 3, size: int = 16) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    return [torch.randn(size, 8, generator=g) for _ in range(n)]


def removed(plan: surgeon.Plan, tensor: str, dim: int = 0) -> set[int]:
    return {i for c in plan.cuts if c.tensor == tensor and c.dim == dim for i in c.remove}


def toy() -> MLP:
    """Hidden unit 2 is always zero (dead ReLU) yet has the largest weights; unit 4 is a
    constant 1 (no variance); unit 5 reaches the output through zero weights (no gradient)."""
    model = MLP().eval()
    with torch.no_grad():
        model.fc1.weight[2] = -5.0
        model.fc1.bias[2] = -100.0
        model.fc2.weight[:, 2] = 5.0
        model.fc1.weight[4] = 0.0
        model.fc1.bias[4] = 1.0
        model.fc1.weight[5] = 5.0
        model.fc2.weight[:, 5] = 0.0
    return model


def test_l2_keeps_the_units_the_data_criteria_drop():
    model = toy()
    assert removed(surgeon.plan(model, 0.2, X), "fc1.weight") & {2, 5} == set()


@pytest.mark.parametrize("importance", ["activation", "fluctuation"])
def test_a_unit_whose_activation_is_always_zero_ranks_last(importance):
    assert 2 in removed(surgeon.plan(toy(), 0.2, X, importance=importance, calibration=batches()), "fc1.weight")


def test_fluctuation_drops_a_constant_unit_that_activation_keeps():
    model = toy()
    cal = batches()
    assert removed(surgeon.plan(model, 0.34, X, importance="fluctuation", calibration=cal), "fc1.weight") >= {2, 4}
    assert 4 not in removed(surgeon.plan(model, 0.34, X, importance="activation", calibration=cal), "fc1.weight")


def test_a_unit_whose_gradient_is_zero_ranks_last_under_taylor():
    model = toy()
    with torch.no_grad():  # unit 2 alive, so that only unit 5 has no gradient
        model.fc1.bias[2] = 0.0
    assert removed(surgeon.plan(model, 0.2, X, importance="taylor", calibration=batches()), "fc1.weight") == {5}


def test_taylor_with_targets_uses_cross_entropy_or_the_given_loss():
    model, seen = toy(), []
    pairs = [(x, torch.randint(0, 3, (len(x),))) for x in batches()]

    def loss_fn(out, y):
        seen.append(y)
        return nn.functional.cross_entropy(out, y)

    with torch.no_grad():
        model.fc1.bias[2] = 0.0
    default = surgeon.plan(model, 0.2, X, importance="taylor", calibration=pairs)
    given = surgeon.plan(model, 0.2, X, importance="taylor", calibration=pairs, loss_fn=loss_fn)
    assert removed(default, "fc1.weight") == removed(given, "fc1.weight") == {5}
    assert [y is p[1] for y, p in zip(seen, pairs)] == [True] * 3


def test_a_criterion_receives_the_statistics():
    model, cal, got = toy(), batches(), []

    def most_active_first_out(stats: Stats) -> np.ndarray:
        got.append(stats)
        return -stats.unit_sum(lambda s: s.var + s.mean ** 2)

    p = surgeon.plan(model, 0.2, X, importance=surgeon.Criterion(most_active_first_out), calibration=cal)
    stats = got[0]
    assert stats.batches == 3 and stats.taylor is None
    site = next(s for s in stats.sites if s.node == "fc2")  # fc2 reads relu(fc1(x)): its mean, per unit
    hidden = torch.cat([torch.relu(model.fc1(x)) for x in cal]).detach().double()
    np.testing.assert_allclose(site.mean, hidden.mean(0).numpy(), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(site.var, hidden.var(0, unbiased=False).numpy(), rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(site.out_norm, model.fc2.weight.detach().square().sum(0).double().numpy(), rtol=1e-6)
    most = int(np.argmax((hidden ** 2).mean(0).numpy()))
    assert removed(p, "fc1.weight") == {most}


def test_a_gradient_criterion_gets_taylor_scores():
    model = toy()
    crit = surgeon.Criterion(lambda s: s.taylor, gradients=True)
    assert (removed(surgeon.plan(model, 0.2, X, importance=crit, calibration=batches()), "fc1.weight")
            == removed(surgeon.plan(model, 0.2, X, importance="taylor", calibration=batches()), "fc1.weight"))


def test_a_criterion_must_return_one_score_per_unit():
    with pytest.raises(surgeon.InputError, match="one score per unit"):
        surgeon.plan(toy(), 0.2, X, importance=surgeon.Criterion(lambda s: np.zeros(3)), calibration=batches())
    with pytest.raises(surgeon.InputError, match="callable"):
        surgeon.Criterion("activation")


@pytest.mark.parametrize("importance", DATA)
def test_resnet18_slims_exactly_and_is_left_untouched(importance):
    model = torchvision.models.resnet18(weights=None, num_classes=10)
    model = liven(model, torch.randn(1, 3, 64, 64))
    model.layer1.train()  # a mix of modes, a frozen layer and stale gradients must all survive
    model.conv1.weight.requires_grad_(False)
    model.fc.weight.grad = torch.ones_like(model.fc.weight)
    before = snapshot(model)
    cal = [torch.randn(4, 3, 64, 64) for _ in range(2)]
    slim = surgeon.slim(model, 0.5, torch.randn(1, 3, 64, 64), importance=importance, calibration=cal)
    assert_unchanged(model, before)
    assert slim.layer1[0].conv1.out_channels == 32
    report = surgeon.verify(model, slim)
    assert report.ok, report
    assert slim.surgeon_timings["calibrate"] > 0


def test_data_criteria_differ_from_l2_on_resnet18():
    model = liven(torchvision.models.resnet18(weights=None, num_classes=10), torch.randn(1, 3, 64, 64))
    x, cal = torch.randn(1, 3, 64, 64), [torch.randn(4, 3, 64, 64)]
    plans = {imp: removed(surgeon.plan(model, 0.5, x, importance=imp, calibration=cal if imp != "l2" else None),
                          "layer1.0.conv1.weight") for imp in ("l2", *DATA)}
    assert all(len(r) == 32 for r in plans.values())
    assert len({frozenset(r) for r in plans.values()}) == 4, plans


def small_vit() -> VisionTransformer:
    model = VisionTransformer(image_size=32, patch_size=8, num_layers=2, num_heads=4, hidden_dim=32, mlp_dim=64,
                              num_classes=10)
    return liven(model, torch.randn(1, 3, 32, 32))


@pytest.mark.parametrize("importance", DATA)
def test_vit_heads_rank_on_data_and_slim_exactly(importance, recwarn):
    model, x = small_vit(), torch.randn(1, 3, 32, 32)
    cal = [torch.randn(4, 3, 32, 32) for _ in range(2)]
    before = snapshot(model)
    slim = surgeon.slim(model, 0.5, x, importance=importance, calibration=cal)
    assert_unchanged(model, before)
    assert slim.encoder.layers[0].self_attention.num_heads == 2
    report = surgeon.verify(model, slim)
    assert report.ok, report
    assert not [w for w in recwarn if "no calibration activations" in str(w.message)]


def test_a_vit_head_with_zero_output_leaves_first():
    model = small_vit()
    attn = model.encoder.layers[0].self_attention
    with torch.no_grad():  # head 1's values are zero: its output is zero, its q/k/out weights the largest
        attn.in_proj_weight[2 * 32 + 8: 2 * 32 + 16] = 0.0
        attn.in_proj_bias[2 * 32 + 8: 2 * 32 + 16] = 0.0
        attn.in_proj_weight[8:16] *= 4
        attn.in_proj_weight[32 + 8: 32 + 16] *= 4
        attn.out_proj.weight[:, 8:16] *= 4
    cal = [torch.randn(4, 3, 32, 32) for _ in range(2)]
    name = "encoder.layers.encoder_layer_0.self_attention.out_proj.weight"
    for importance in ("activation", "fluctuation"):
        p = surgeon.plan(model, 0.25, torch.randn(1, 3, 32, 32), importance=importance, calibration=cal)
        assert removed(p, name, dim=1) == set(range(8, 16)), importance
    assert removed(surgeon.plan(model, 0.25, torch.randn(1, 3, 32, 32)), name, dim=1) != set(range(8, 16))


@pytest.mark.parametrize("importance", ["activation", "taylor"])
def test_hugging_face_bert_through_export(importance, recwarn):
    pytest.importorskip("transformers")
    model = tiny_bert()
    ids = torch.randint(3, 100, (2, 7))
    example = {"input_ids": ids, "attention_mask": torch.ones_like(ids)}
    cal = [{"input_ids": torch.randint(3, 100, (4, 7)), "attention_mask": torch.ones(4, 7, dtype=torch.long)}]
    before = snapshot(model)
    slim = surgeon.slim(model, 0.5, example, importance=importance, calibration=cal)
    assert not [w for w in recwarn if "no calibration activations" in str(w.message)]
    assert_unchanged(model, before)
    assert slim.bert.encoder.layer[0].attention.self.num_attention_heads == 2
    report = surgeon.verify(model, slim)
    assert report.ok, report
    odd = [{k: v[:3] for k, v in cal[0].items()}]  # the export graph is run in pieces of 2; the model is not
    if importance == "activation":
        with pytest.raises(surgeon.InputError, match="multiple of 2"):
            surgeon.plan(model, 0.5, example, importance=importance, calibration=odd)
    else:
        assert surgeon.plan(model, 0.5, example, importance=importance, calibration=odd).removed


def test_data_criteria_need_calibration():
    for importance in (*DATA, surgeon.Criterion(lambda s: s.taylor)):
        with pytest.raises(surgeon.InputError, match="calibration="):
            surgeon.plan(toy(), 0.5, X, importance=importance)


def test_calibration_batches_must_have_the_example_shapes():
    with pytest.raises(surgeon.InputError, match=r"\(N, 8\)"):
        surgeon.plan(toy(), 0.5, X, importance="activation", calibration=[torch.randn(4, 7)])
    with pytest.raises(surgeon.InputError, match=r"\(N, 3, 64, 64\)"):
        surgeon.plan(torchvision.models.resnet18(), 0.5, torch.randn(1, 3, 64, 64), importance="taylor",
                     calibration=[torch.randn(2, 3, 32, 32)])
    with pytest.raises(surgeon.InputError, match="iterable of batches"):
        surgeon.plan(toy(), 0.5, X, importance="activation", calibration=torch.randn(4, 8))
    with pytest.raises(surgeon.InputError, match="no batches"):
        surgeon.plan(toy(), 0.5, X, importance="activation", calibration=[])
    with pytest.raises(surgeon.InputError, match="like the example inputs"):
        surgeon.plan(toy(), 0.5, X, importance="activation", calibration=[(X, X, X)])


def test_unused_data_is_warned_about():
    with pytest.warns(UserWarning, match="loss_fn is read only by gradient criteria"):
        surgeon.plan(toy(), 0.5, X, importance="activation", calibration=batches(), loss_fn=lambda o, t: o.sum())
    with pytest.warns(UserWarning, match="calibration data is read only by data criteria"):
        surgeon.plan(toy(), 0.5, X, calibration=batches())
    with pytest.raises(surgeon.InputError, match="loss_fn must"):
        surgeon.plan(toy(), 0.5, X, importance="taylor", calibration=batches(), loss_fn=lambda o, t: o)


def test_calibration_runs_once_over_a_one_shot_iterator():
    p = surgeon.plan(toy(), 0.2, X, importance="activation", calibration=iter(batches()))
    assert 2 in removed(p, "fc1.weight")


class _Constants(nn.Module):
    """Tensors that are neither parameters nor buffers: a plain attribute of the model and of
    a submodule, and one made in `forward` (fx stores all three as graph constants)."""

    def __init__(self) -> None:
        super().__init__()
        self.c, self.d = nn.Conv2d(3, 8, 3), nn.Conv2d(8, 4, 1)
        self.k = torch.full((1, 1, 1, 1), 2.0)
        self.inner = nn.Module()
        self.inner.k = torch.tensor(0.5)

    def forward(self, x):
        y = self.c(x) * self.k * self.inner.k + torch.tensor(1.0)
        return self.d(torch.relu(y)).mean((2, 3))


def test_graph_constants_are_found_by_every_run_of_the_graph():
    model = liven(_Constants().eval(), torch.randn(2, 3, 12, 12))
    x = torch.randn(4, 3, 12, 12)
    slim = surgeon.slim(model, 0.5, x, importance="activation", calibration=[x], compensate=True)
    assert slim.c.out_channels == 4 and not hasattr(model, "_tensor_constant0")
    assert surgeon.verify(model, slim).ok
