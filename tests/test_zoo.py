"""The torchvision zoo: every CNN slims at ratio 0.5 with the one generic call.

Random-init torchvision weights are often so small that the output hardly depends on most
channels, which would make mask-equivalence trivially true. So each model is first *livened*:
Kaiming-normal convs/linears, random norm affine parameters, layer scales of order one (ConvNeXt's
are 1e-6), and BatchNorm statistics measured on random images (as after training, activations
stay at unit scale instead of growing ×30 per stage, where float rounding alone would be
amplified past any tolerance). Every test also asserts that the slim model differs from the
unpruned original, and that `verify` probed every checked group and found none uninformative:
each group's removed channels, given back alone, visibly change the output, so the equivalence
check had something to catch in every group.
"""
from __future__ import annotations

import copy
import gc
import math

import pytest
import torch
import torchvision
from torch import nn

import surgeon
from util import liven, n_params, params, stale_sizes
from zoo import CNNS, SEGMENTATION, SLOW, input_size


def outputs(model: nn.Module, x: torch.Tensor) -> list[torch.Tensor]:
    with torch.no_grad():
        out = model(x)
    return list(out.values()) if isinstance(out, dict) else [out]


def check(model: nn.Module, x: torch.Tensor, *, max_keep: float = 0.6) -> None:
    before = outputs(model, x)
    slim = surgeon.slim(model, 0.5, x)
    after = outputs(slim, x)
    assert type(slim) is type(model)
    assert [t.shape for t in after] == [t.shape for t in before]
    keep = n_params(slim) / n_params(model)
    assert keep <= max_keep, f"kept {keep:.2f} of the parameters"
    assert not stale_sizes(slim), stale_sizes(slim)
    report = surgeon.verify(model, slim, x, probe_seconds=math.inf)
    assert report.ok, report
    assert report.checked or report.unchecked
    assert report.probed == len(report.checked)
    if report.uninformative:  # deep squeeze-excitation units move the output by ~1e-6: float64 sees them
        report = surgeon.verify(copy.deepcopy(model).double(), copy.deepcopy(slim).double(), x.double(),
                                probe_seconds=math.inf)
        assert report.ok, report
    plan = slim.surgeon_plan  # auxiliary classifiers run in training mode only: eval cannot see them
    unseen = [g for g in report.uninformative if not all("aux" in s.lower() for s in plan.groups[g].spaces)]
    assert not unseen, [plan.groups[g] for g in unseen]
    change = max(float((a - b).norm() / b.norm()) for a, b in zip(after, before))
    assert change > 1e-3, f"pruning changed the output by only {change:.1e}: the check proves nothing"


@pytest.mark.parametrize("name", params(CNNS, SLOW))
def test_classification(name):
    size = input_size(name)
    x = torch.randn(1, 3, size, size)
    model = liven(getattr(torchvision.models, name)(weights=None), x)
    check(model, x)
    del model
    gc.collect()


@pytest.mark.parametrize("name", params(SEGMENTATION, SLOW))
def test_segmentation(name):
    model = getattr(torchvision.models.segmentation, name)(weights=None, weights_backbone=None)
    x = torch.randn(1, 3, 64, 64)
    check(liven(model, x), x)
    del model
    gc.collect()


def test_count():
    assert len(CNNS) == 68
