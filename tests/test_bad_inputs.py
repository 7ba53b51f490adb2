"""Every bad or unusual input answered: a clear `SurgeonError`, or a correct slim model — and
the user's model bit-identical afterwards (parameters, buffers, attributes, hooks, modes,
`requires_grad`, gradients)."""
from __future__ import annotations

import math
import re

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torchvision.ops.misc import FrozenBatchNorm2d

import surgeon
from surgeon.util import eval_mode
from util import assert_unchanged, snapshot

X = torch.randn(2, 3, 8, 8)


class Net(nn.Module):
    """conv → norm → relu → conv, a residual add, a pooled Linear head."""

    def __init__(self, norm: type[nn.Module] = nn.BatchNorm2d) -> None:
        super().__init__()
        self.a, self.na = nn.Conv2d(3, 16, 3, padding=1), norm(16)
        self.b, self.nb = nn.Conv2d(16, 16, 3, padding=1), norm(16)
        self.c = nn.Conv2d(16, 16, 1)
        self.head = nn.Linear(16, 5)

    def forward(self, x):
        x = F.relu(self.na(self.a(x)))
        x = x + self.nb(self.b(F.relu(self.c(x))))
        return self.head(x.mean((2, 3)))


def slim_checked(model: nn.Module, x=X, **kw) -> nn.Module:
    """Slim (inplace=False), check the model is untouched, the output shape kept and the
    slim model mask-equivalent."""
    before = snapshot(model)
    slim = surgeon.slim(model, 0.5, x, **kw)
    assert_unchanged(model, before)
    inputs = x if isinstance(x, tuple) else (x,)
    with eval_mode(model), eval_mode(slim), torch.no_grad():
        assert [t.shape for t in _flat(slim(*inputs))] == [t.shape for t in _flat(model(*inputs))]
    assert surgeon.verify(model, slim, x).ok
    assert_unchanged(model, before)
    return slim


def _flat(out) -> list[torch.Tensor]:
    if isinstance(out, torch.Tensor):
        return [out]
    if isinstance(out, dict):
        return [t for v in out.values() for t in _flat(v)]
    return [t for v in out for t in _flat(v)]


def refused(model: nn.Module, error: type[Exception], match: str, *args, **kw) -> None:
    """`slim` raises `error` (a SurgeonError) matching `match`, leaving the model untouched."""
    before = snapshot(model)
    with pytest.raises(error, match=match) as info:
        surgeon.slim(model, *args, **kw)
    assert isinstance(info.value, surgeon.SurgeonError)
    assert_unchanged(model, before)


# weights -------------------------------------------------------------------------------------

@pytest.mark.parametrize("value", [math.nan, math.inf, -math.inf])
@pytest.mark.parametrize("name, index", [("b.weight", (3, 0, 0, 0)), ("na.weight", (5,)), ("c.bias", (2,))])
def test_non_finite_weights_are_refused(value, name, index):
    """Whole tensors and 1-D ones (ranked together, in one concatenation) name the culprit."""
    model = Net().eval()
    with torch.no_grad():
        model.get_parameter(name)[index] = value
    refused(model, surgeon.InputError, rf"'{re.escape(name)}' holds NaN or Inf.*meaningless", 0.5, X)


def test_non_finite_weights_need_no_ranking_with_random_importance():
    model = Net().eval()
    with torch.no_grad():
        model.b.weight[3, 0, 0, 0] = math.nan
    before = snapshot(model)
    assert surgeon.slim(model, 0.5, X, importance="random").b.out_channels == 8
    assert_unchanged(model, before)


def test_non_finite_scores_from_a_callable_are_refused():
    refused(Net().eval(), surgeon.InputError, "NaN or Inf importance scores", 0.5, X,
            importance=lambda t, dim: torch.full((t.shape[dim],), math.nan))


def test_meta_model_plans_from_shapes_alone():
    with torch.device("meta"):
        model = Net().eval()
    x = torch.randn(2, 3, 8, 8, device="meta")
    before = snapshot(model)
    for importance in ("random", lambda t, dim: torch.arange(t.shape[dim], dtype=torch.float)):
        plan = surgeon.plan(model, 0.5, x, importance=importance)
        assert sum(plan.removed) > 0
        slim = plan.apply(model)
        assert slim.a.weight.is_meta and slim.a.out_channels == 8
    assert_unchanged(model, before)
    refused(model, surgeon.InputError, "meta device.*importance='random'", 0.5, x)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float64])
def test_other_float_dtypes(dtype):
    model = Net().eval().to(dtype)
    slim = slim_checked(model, X.to(dtype))
    assert slim.a.weight.dtype == dtype and slim.a.out_channels == 8


def test_wrong_input_dtype_or_shape_is_a_trace_error():
    model = Net().eval()
    refused(model, surgeon.TraceError, "example inputs", 0.5, X.double())
    refused(model, surgeon.TraceError, r"example inputs of shape \(2, 5, 8, 8\)", 0.5, torch.randn(2, 5, 8, 8))
    refused(model, surgeon.TraceError, "example inputs", 0.5, torch.randint(0, 5, (2, 3, 8, 8)))


# module state --------------------------------------------------------------------------------

def test_hooks_stay_on_the_model_and_the_slim_copy():
    """Hooks are part of the model's forward (weight_norm, offloading): they run while tracing
    and verifying, and the slim copy keeps them."""
    model = Net().eval()
    calls = []
    model.b.register_forward_hook(lambda m, i, o: calls.append(o.shape))
    model.register_forward_pre_hook(lambda m, i: None)
    slim_checked(model)
    assert torch.Size([2, 16, 8, 8]) in calls
    slim = surgeon.slim(model, 0.5, X)
    calls.clear()
    with torch.no_grad():
        slim(X)
    assert calls == [torch.Size([2, 8, 8, 8])]  # the slim copy keeps its own hooks


def test_frozen_parameters_and_frozen_batch_norm():
    model = Net(FrozenBatchNorm2d).eval()
    with torch.no_grad():
        for bn in (model.na, model.nb):
            bn.weight.uniform_(0.5, 1.5)
            bn.running_var.uniform_(0.5, 2)
    model.a.requires_grad_(False)
    slim = slim_checked(model)
    assert slim.na.weight.shape == (8,) and not slim.a.weight.requires_grad and slim.b.weight.requires_grad


class BufferMath(nn.Module):
    """fx computes `self.s.reshape(...).exp()` while tracing and stores the result on the model
    as `_tensor_constant0`: it must not stay there, and the channels it scales are kept."""

    def __init__(self) -> None:
        super().__init__()
        self.conv, self.head = nn.Conv2d(3, 8, 1), nn.Conv2d(8, 2, 1)
        self.register_buffer("s", torch.rand(8))

    def forward(self, x):
        return self.head(self.conv(x) * self.s.reshape(1, -1, 1, 1).exp())


def test_tensors_computed_while_tracing_leave_no_trace():
    model = BufferMath()
    before = snapshot(model)
    plan = surgeon.plan(model, 0.5, X)
    assert_unchanged(model, before)
    assert sum(plan.removed) == 0 and any("unprunable" in w for g in plan.groups for w in g.frozen_why)


def test_train_mode_model_stays_in_train_mode():
    model = Net().train()
    model.na.eval()  # mixed modes survive too
    slim = slim_checked(model)
    assert slim.training and not slim.na.training and model.training


def test_gradients_are_kept_and_sliced():
    model = Net().eval()
    model(X).sum().backward()
    slim = slim_checked(model)
    assert slim.a.weight.grad.shape == slim.a.weight.shape


# graph shapes --------------------------------------------------------------------------------

class Twice(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.stem, self.shared, self.head = nn.Conv2d(3, 8, 1), nn.Conv2d(8, 8, 3, padding=1), nn.Conv2d(8, 2, 1)

    def forward(self, x):
        return self.head(self.shared(F.relu(self.shared(self.stem(x)))))


class Direct(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.w = nn.Parameter(torch.randn(8, 3, 3, 3) * 0.3)
        self.scale = nn.Parameter(torch.rand(1, 8, 1, 1) + 0.5)
        self.head = nn.Conv2d(8, 2, 1)

    def forward(self, x):
        return self.head(F.relu(F.conv2d(x, self.w, padding=1)) * self.scale)


class Tied(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.emb = nn.Embedding(20, 8)
        self.mid = nn.Linear(8, 16)
        self.back = nn.Linear(16, 8)
        self.out = nn.Linear(8, 20, bias=False)
        self.out.weight = self.emb.weight

    def forward(self, ids):
        return self.out(self.back(F.relu(self.mid(self.emb(ids)))))


class TwoOutputs(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.stem, self.a, self.b = nn.Conv2d(3, 8, 1), nn.Conv2d(8, 4, 1), nn.Linear(8, 3)

    def forward(self, x):
        h = F.relu(self.stem(x))
        return self.a(h), {"logits": self.b(h.mean((2, 3)))}


class DictInput(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.img, self.tab, self.head = nn.Conv2d(3, 8, 1), nn.Linear(4, 8), nn.Linear(8, 2)

    def forward(self, image, table):
        return self.head(F.relu(self.img(image).mean((2, 3)) + self.tab(table)))


def test_a_module_called_twice():
    slim = slim_checked(Twice())
    assert slim.shared.out_channels == slim.shared.in_channels == 4


def test_parameters_used_directly():
    slim = slim_checked(Direct())
    assert slim.w.shape[0] == slim.scale.shape[1] == 4


def test_tied_weights_stay_tied():
    slim = slim_checked(Tied(), torch.randint(0, 20, (2, 5)))
    assert slim.out.weight is slim.emb.weight and slim.mid.out_features == 8


def test_multiple_outputs_keep_their_shapes():
    slim = slim_checked(TwoOutputs())
    assert slim.stem.out_channels == 4 and slim.a.out_channels == 4


def test_dict_inputs():
    model = DictInput()
    inputs = {"image": X, "table": torch.randn(2, 4)}
    before = snapshot(model)
    slim = surgeon.slim(model, 0.5, inputs)
    assert_unchanged(model, before)
    assert slim(**inputs).shape == (2, 2) and surgeon.verify(model, slim).ok
    assert slim.img.out_channels == slim.tab.out_features == 4


class Branchy(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3)

    def forward(self, x):
        return self.conv(x) if x.sum() > 0 else -self.conv(x)


def test_data_dependent_control_flow_is_a_trace_error():
    refused(Branchy(), surgeon.TraceError, "could not trace Branchy", 0.5, X)


# ratios and options --------------------------------------------------------------------------

@pytest.mark.parametrize("ratio", [-0.1, -1, 1, 1.0, 1.5, math.nan, math.inf, "0.5", "half", None, True, [0.5]])
def test_bad_ratios(ratio):
    model = Net().eval()
    refused(model, surgeon.InputError, "ratio", ratio, X)
    with pytest.raises(ValueError):
        surgeon.plan(model, ratio, X)


def test_ratio_zero_changes_nothing():
    model = Net().eval()
    slim = slim_checked(model) if False else surgeon.slim(model, 0.0, X)
    assert all(torch.equal(a, b) for a, b in zip(slim.state_dict().values(), model.state_dict().values()))


def test_ratio_just_below_one_keeps_one_unit_per_group():
    model = Net().eval()
    before = snapshot(model)
    slim = surgeon.slim(model, 0.999, X)
    assert_unchanged(model, before)
    assert slim.a.out_channels == 1 and slim.c.out_channels == 1
    assert surgeon.verify(model, slim).ok
