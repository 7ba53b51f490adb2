"""Global budgets: `target_macs=` / `target_params=` land within 2 % of the target on the zoo
sample, counted on the rebuilt model; `max_ratio` and `round_to` hold; the plan carries the
per-group ratios (and its JSON too); bad budgets are refused with the figure that can be had."""
from __future__ import annotations

import functools
import io
import json
import math

import pytest
import torch
import torchvision
from rich.console import Console
from torch import nn

import surgeon
from surgeon.cli import main
from surgeon.report import print_analysis
from surgeon.util import count_macs, count_params
from util import liven

TOLERANCE = 0.02
ZOO = {  # the torchvision sample of tests/test_zoo.py, at small inputs
    "resnet18": lambda: torchvision.models.resnet18(),
    "mobilenet_v2": lambda: torchvision.models.mobilenet_v2(),
    "efficientnet_b0": lambda: torchvision.models.efficientnet_b0(),
    "densenet121": lambda: torchvision.models.densenet121(),
    "vit_b_16": lambda: torchvision.models.VisionTransformer(  # vit_b_16's widths, 4 of its 12 layers
        image_size=64, patch_size=16, num_layers=4, num_heads=12, hidden_dim=768, mlp_dim=3072),
}


@functools.cache
def _model(name: str) -> tuple[nn.Module, torch.Tensor]:
    """A livened model (every channel visibly matters) and its input; plans leave it untouched."""
    torch.manual_seed(0)
    x = torch.randn(1, 3, 64, 64)
    return liven(ZOO[name]().eval(), x), x


def _check_ratios(plan: surgeon.Plan, max_ratio: float) -> None:
    assert len(plan.ratios) == len(plan.groups)
    for g, r, ratio in zip(plan.groups, plan.removed, plan.ratios):
        assert ratio == pytest.approx(r / g.units)
        assert ratio <= max_ratio + 1e-12 and r <= max(g.units - 1, 0), (g, r)


@pytest.mark.parametrize("name", list(ZOO))
def test_target_macs_lands_within_two_percent(name):
    model, x = _model(name)
    slim = surgeon.slim(model, example_inputs=x, target_macs=0.5)
    plan = slim.surgeon_plan
    before, after = count_macs(model, x), count_macs(slim, x)
    assert abs(after / before - 0.5) <= TOLERANCE * 0.5, after / before
    assert plan.ratio is None and plan.budget.metric == "macs" and plan.budget.total == before
    assert plan.budget.reached == after  # the estimate is exact for conv, linear and attention
    _check_ratios(plan, 0.9)
    pruned = [r for r in plan.ratios if r > 0]
    assert len(set(pruned)) > 1, "every group lost the same ratio: nothing was allocated"
    report = surgeon.verify(model, slim, probe_seconds=1.0)
    assert report.ok and report.checked, report


@pytest.mark.parametrize("name", ["resnet18", "mobilenet_v2"])
def test_target_params_lands_within_two_percent(name):
    model, x = _model(name)
    slim = surgeon.slim(model, example_inputs=x, target_params=0.4)
    kept = count_params(slim) / count_params(model)
    assert abs(kept - 0.4) <= TOLERANCE * 0.4, kept
    assert slim.surgeon_plan.budget.reached == count_params(slim)
    assert surgeon.verify(model, slim).ok


def test_absolute_counts():
    model, x = _model("resnet18")
    macs, n_params = count_macs(model, x), count_params(model)
    by_macs = surgeon.slim(model, example_inputs=x, target_macs=int(0.3 * macs))
    assert abs(count_macs(by_macs, x) / (0.3 * macs) - 1) <= TOLERANCE
    by_params = surgeon.slim(model, example_inputs=x, target_params=2_000_000)
    assert abs(count_params(by_params) / 2_000_000 - 1) <= TOLERANCE
    assert by_params.surgeon_plan.budget.target == 2_000_000


def test_max_ratio_caps_every_group():
    model, x = _model("resnet18")
    free = surgeon.plan(model, None, x, target_macs=0.2)
    assert max(free.ratios) > 0.6  # without a cap some group loses more than the cap below
    capped = surgeon.plan(model, None, x, target_macs=0.2, max_ratio=0.6)
    _check_ratios(capped, 0.6)
    slim = capped.apply(model)
    assert abs(count_macs(slim, x) / count_macs(model, x) - 0.2) <= TOLERANCE * 0.2


def test_round_to_keeps_widths_multiples():
    model, x = _model("mobilenet_v2")
    plan = surgeon.plan(model, None, x, target_macs=0.5, round_to=8)
    rounded = [(g, r) for g, r in zip(plan.groups, plan.removed) if r and not g.frozen_units]
    assert rounded
    for g, r in rounded:
        assert (g.units - r) % 8 == 0, (g, r)
    slim = plan.apply(model)
    assert abs(count_macs(slim, x) / count_macs(model, x) - 0.5) <= TOLERANCE * 0.5


def test_scores_are_normalised_per_group():
    """Two groups whose raw scores differ 100×: raw scores would strip the small group first;
    normalised by each group's mean they both lose units."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 32, 3), nn.ReLU(), nn.Conv2d(32, 32, 3), nn.ReLU(), nn.Conv2d(32, 4, 3))
    with torch.no_grad():
        model[2].weight.mul_(100)
    x = torch.randn(1, 3, 16, 16)
    plan = surgeon.plan(model, None, x, target_params=0.5)
    first, second = plan.ratios[:2]
    assert 0.15 < first < 0.85 and 0.15 < second < 0.85, plan.ratios


def test_plan_json_round_trip_keeps_budget_and_ratios():
    model, x = _model("resnet18")
    plan = surgeon.plan(model, None, x, target_macs=0.5)
    again = surgeon.Plan.from_json(plan.to_json())
    assert again == plan and again.budget == plan.budget and again.ratios == plan.ratios
    old = json.loads(plan.to_json())
    del old["ratios"], old["budget"]  # a plan saved before budgets existed
    loaded = surgeon.Plan.from_json(json.dumps(old))
    assert loaded.budget is None and loaded.ratios == plan.ratios


def test_analyze_shows_ratios_and_budget():
    model, x = _model("resnet18")
    out = io.StringIO()
    plan = surgeon.analyze(model, x, target_macs=0.5, show=False)
    print_analysis(model, plan, console=Console(file=out, width=160))
    text = out.getvalue()
    assert "MACs keep 0.5" in text and "budget: MACs" in text and "ratio" in text
    assert f"{plan.ratios[0]:.3f}" in text


def test_unreachable_budget_names_the_best_figure():
    model, x = _model("resnet18")
    with pytest.raises(surgeon.InputError, match=r"max_ratio=0.5 the model keeps [\d,]+ \(0\.\d+ of it\)"):
        surgeon.plan(model, None, x, target_macs=0.05, max_ratio=0.5)


@pytest.mark.parametrize("kwargs, message", [
    ({"ratio": 0.5, "target_macs": 0.5}, "give one of ratio, target_macs or target_params"),
    ({"target_macs": 0.5, "target_params": 0.5}, "give one of ratio, target_macs or target_params"),
    ({"target_macs": 0}, r"target_macs must be a fraction in \(0, 1\] to keep or a count > 1"),
    ({"target_params": math.nan}, "target_params must be a number"),
    ({"target_macs": "half"}, "target_macs must be a number"),
    ({"target_macs": 0.5, "max_ratio": 0}, r"max_ratio must be a number in \(0, 1\]"),
    ({"target_macs": 0.5, "max_ratio": 1.5}, r"max_ratio must be a number in \(0, 1\]"),
])
def test_bad_budgets_are_refused(kwargs, message):
    with pytest.raises(surgeon.InputError, match=message):
        surgeon.Config(**kwargs)


def test_ratio_and_target_together_are_refused_by_the_verbs():
    model = nn.Sequential(nn.Conv2d(3, 8, 3), nn.Conv2d(8, 4, 3))
    x = torch.randn(1, 3, 8, 8)
    with pytest.raises(surgeon.InputError, match="give one of ratio, target_macs"):
        surgeon.slim(model, 0.5, x, target_macs=0.5)
    with pytest.raises(surgeon.InputError, match="give one of ratio, target_macs"):
        surgeon.plan(model, surgeon.Config(0.5), x, target_params=0.5)
    with pytest.raises(surgeon.InputError, match="pass a ratio"):
        surgeon.slim(model, None, x)
    assert surgeon.Config(0.5).ratio == 0.5 and surgeon.slim(model, 0.5, x)[0].out_channels == 4


def test_cli_target_macs(tmp_path, capsys):
    out = tmp_path / "slim"
    code = main(["slim", "resnet18", "--input-shape", "64", "--target-macs", "50%", "--max-ratio", "0.8",
                 "--out", str(out), "--no-onnx", "--repeats", "1", "-q"])
    assert code == 0
    report = json.loads((out / "report.json").read_text())
    assert report["options"]["target_macs"] == 0.5 and report["options"]["max_ratio"] == 0.8
    assert abs(report["keep"]["macs"] - 0.5) <= TOLERANCE * 0.5
    assert main(["slim", "resnet18", "--ratio", "0.5", "--target-params", "0.5", "--out", str(tmp_path / "x")]) == 2
    assert "not both" in capsys.readouterr().err
