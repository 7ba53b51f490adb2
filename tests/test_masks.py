"""Tests for surgeon.masks: exact sparsity, commit, optimizer steps, state-dict round trip."""

import io

import pytest
import torch
import torch.nn as nn
from rich.console import Console

from surgeon import masks
from surgeon.errors import SurgeonError


def make_model(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
        nn.Conv2d(8, 16, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(2), nn.Flatten(),
        nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, 10))


def weighted(model: nn.Module) -> dict[str, nn.Module]:
    return {n: m for n, m in model.named_modules() if isinstance(m, masks.DEFAULT_INCLUDE)}


@pytest.fixture
def x() -> torch.Tensor:
    return torch.randn(4, 3, 8, 8, generator=torch.Generator().manual_seed(1))


@pytest.mark.parametrize("sparsity", [0.0, 0.3, 0.75, 0.9])
def test_layer_scope_hits_sparsity_exactly_with_the_smallest_weights(sparsity):
    model = make_model()
    dense = {n: m.weight.detach().clone() for n, m in weighted(model).items()}
    rep = masks.prune(model, sparsity, scope="layer")
    for name, module in weighted(model).items():
        mask = module.weight_mask.bool()
        assert int((~mask).sum()) == round(sparsity * mask.numel())
        assert rep[name].zeros == round(sparsity * mask.numel())
        if 0 < sparsity:
            assert dense[name][~mask].abs().max() <= dense[name][mask].abs().min()


def test_global_scope_uses_one_threshold_across_layers():
    model = make_model()
    dense = {n: m.weight.detach().clone() for n, m in weighted(model).items()}
    rep = masks.prune(model, 0.6, scope="global")
    total = sum(w.numel() for w in dense.values())
    assert rep.zeros == round(0.6 * total) and rep.total == total
    dropped = torch.cat([dense[n][~m.weight_mask.bool()] for n, m in weighted(model).items()])
    kept = torch.cat([dense[n][m.weight_mask.bool()] for n, m in weighted(model).items()])
    assert dropped.abs().max() <= kept.abs().min()
    assert len({round(layer.sparsity, 3) for layer in rep.layers}) > 1


def test_sparsity_is_cumulative_and_masks_only_grow():
    model = make_model()
    first = masks.prune(model, 0.1)
    before = masks.masks_of(model)
    again = masks.prune(model, 0.1)
    assert again.zeros == first.zeros
    more = masks.prune(model, 0.2)
    for name, mask in masks.masks_of(model).items():
        assert not (mask & ~before[name]).any(), "a masked weight came back"
        assert more[name].zeros == round(0.2 * mask.numel())
    relative = masks.prune(model, 0.5, relative=True)
    for layer in relative.layers:
        kept_before = layer.total - more[layer.name].zeros
        assert layer.zeros == more[layer.name].zeros + round(0.5 * kept_before)


def test_dim_masks_whole_slices_ranked_by_the_given_norm():
    layer = nn.Linear(4, 3, bias=False)
    with torch.no_grad():  # row 0 wins under L1, row 1 under L2
        layer.weight.copy_(torch.tensor([[1.0, 1.0, 1.0, 1.0], [2.1, 0.0, 0.0, 0.0],
                                         [5.0, 5.0, 5.0, 5.0]]))
    model_l1, model_l2 = nn.Sequential(layer), nn.Sequential(nn.Linear(4, 3, bias=False))
    model_l2[0].weight.data.copy_(layer.weight)
    masks.prune(model_l1, 0.34, dim=0, norm=1)
    masks.prune(model_l2, 0.34, dim=0, norm=2)
    assert model_l1[0].weight_mask.sum(dim=1).tolist() == [4.0, 0.0, 4.0]
    assert model_l2[0].weight_mask.sum(dim=1).tolist() == [0.0, 4.0, 4.0]


def test_commit_leaves_plain_parameters_and_the_same_outputs(x):
    model = make_model().eval()
    masks.prune(model, 0.7, scope="global")
    before = model(x)
    rep = masks.commit(model)
    assert rep.sparsity == pytest.approx(0.7, abs=1e-3)
    keys = model.state_dict().keys()
    assert not [k for k in keys if k.endswith(("_orig", "_mask"))]
    for module in weighted(model).values():
        assert isinstance(module.weight, nn.Parameter) and not module._forward_pre_hooks
    torch.testing.assert_close(model(x), before, rtol=0, atol=0)


@pytest.mark.parametrize("make_opt", [
    lambda p: torch.optim.SGD(p, lr=0.1, momentum=0.9, weight_decay=1e-2),
    lambda p: torch.optim.Adam(p, lr=0.01, weight_decay=1e-2),
])
def test_masked_weights_stay_zero_through_optimizer_steps(x, make_opt):
    model = make_model()
    opt = make_opt(model.parameters())
    model(x).sum().backward()
    opt.step()  # momentum / moments already non-zero everywhere before masking
    masks.prune(model, 0.5, scope="global")
    stored = masks.masks_of(model)
    for _ in range(3):
        opt.zero_grad()
        model(x).square().mean().backward()
        opt.step()
    model(x)
    for name, module in weighted(model).items():
        assert module.weight[~stored[name]].abs().max() == 0
        assert module.weight[stored[name]].ne(0).any()


def test_state_dict_round_trip_restores_masks_and_outputs(x):
    model = make_model().eval()
    masks.prune(model, 0.8, scope="global", exclude=("9",))
    buffer = io.BytesIO()
    torch.save(model.state_dict(), buffer)
    buffer.seek(0)
    fresh = make_model(seed=1).eval()
    rep = masks.load_state_dict(fresh, torch.load(buffer))
    assert rep == masks.report(model)
    assert not rep["9"].masked
    torch.testing.assert_close(fresh(x), model(x), rtol=0, atol=0)


def test_report_table_lists_layers_and_total():
    model = make_model()
    rep = masks.prune(model, 0.5)
    console = Console(width=100, record=True)
    console.print(rep)
    text = console.export_text()
    assert all(name in text for name in weighted(model)) and "total" in text
    assert "50.00%" in repr(rep)


@pytest.mark.parametrize("bad", [1.0, -0.1, 1.5, "0.5", True, None])
def test_bad_sparsity_names_the_value(bad):
    with pytest.raises(masks.MaskError, match=repr(bad).replace(".", r"\.")):
        masks.prune(make_model(), bad)


def test_bad_options_raise_surgeon_errors():
    model = make_model()
    with pytest.raises(SurgeonError, match="'local'"):
        masks.prune(model, 0.5, scope="local")
    with pytest.raises(SurgeonError, match="norm"):
        masks.prune(model, 0.5, norm=0)
    with pytest.raises(SurgeonError, match="classifier"):
        masks.prune(model, 0.5, exclude=("classifier",))
    with pytest.raises(SurgeonError, match="Embedding"):
        masks.prune(model, 0.5, include=(nn.Embedding,))
    with pytest.raises(SurgeonError, match=r"\(8, 3, 3, 3\)"):
        masks.apply(model, {"0": torch.ones(3, 3)})
    assert not masks.masks_of(model), "a failed call left masks behind"
