"""Tests for surgeon.schedule: milestones, LR ×0.1 and optimizer-state reset, history."""

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from surgeon import masks, schedule


def make_model(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(8, 32), nn.ReLU(), nn.Linear(32, 16), nn.ReLU(),
                         nn.Linear(16, 3))


def make_data() -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(128, 8, generator=g)
    return x, (x[:, 0] > 0).long() + (x[:, 1] > 0.5).long()


class Recorder:
    """A fine-tune function that records what the optimizer looked like when called."""

    def __init__(self, data: tuple[torch.Tensor, torch.Tensor]) -> None:
        self.data = data
        self.calls: list[dict] = []

    def __call__(self, model: nn.Module, optimizer: torch.optim.Optimizer) -> None:
        params = [p for g in optimizer.param_groups for p in g["params"]]
        self.calls.append({
            "lrs": [g["lr"] for g in optimizer.param_groups],
            "state": {k: dict(v) for k, v in optimizer.state.items()},
            "owns_model": {id(p) for p in params} == {id(p) for p in model.parameters()},
        })
        train(model, optimizer, self.data, steps=3)


def train(model, optimizer, data, *, steps):
    x, y = data
    for _ in range(steps):
        optimizer.zero_grad()
        F.cross_entropy(model(x), y).backward()
        optimizer.step()


def accuracy(model, data):
    x, y = data
    with torch.no_grad():
        return (model(x).argmax(1) == y).float().mean().item()


@pytest.mark.parametrize("target,step,expected", [
    (0.5, 0.2, (0.2, 0.36, 0.488, 0.5)), (0.3, 0.3, (0.3,)), (0.0, 0.1, ()), (0.1, 0.5, (0.1,)),
])
def test_milestones_remove_step_of_what_is_left_and_land_on_target(target, step, expected):
    assert schedule.milestones(target, step) == pytest.approx(expected)


@pytest.mark.parametrize("make_opt,state_key", [
    (lambda ps: torch.optim.SGD(ps, lr=0.2, momentum=0.9), "momentum_buffer"),
    (lambda ps: torch.optim.Adam(ps, lr=0.01), "exp_avg"),
])
def test_finetune_sees_lr_scaled_and_fresh_optimizer_state(make_opt, state_key):
    data = make_data()
    model = make_model()
    decay = [p for n, p in model.named_parameters() if n.endswith("weight")]
    no_decay = [p for n, p in model.named_parameters() if n.endswith("bias")]
    opt = make_opt([{"params": decay}, {"params": no_decay, "weight_decay": 0.0}])
    base = [g["lr"] for g in opt.param_groups]
    opt.param_groups[1]["lr"] = base[1] = base[0] / 2
    train(model, opt, data, steps=5)
    assert all(state_key in s for s in opt.state.values())
    recorder = Recorder(data)
    result = schedule.iterative(model, 0.6, 0.3, kind="unstructured", finetune=recorder,
                                optimizer=opt, evaluate=lambda m: accuracy(m, data),
                                progress=False)
    assert len(recorder.calls) == len(schedule.milestones(0.6, 0.3)) == 3
    for call in recorder.calls:
        assert call["lrs"] == pytest.approx([0.1 * lr for lr in base])
        assert call["state"] == {}, "momentum / moments were not reset"
        assert call["owns_model"]
    assert result.optimizer is opt and result.model is model
    assert all(state_key in s for s in opt.state.values()), "fine-tuning did not step"


def test_unstructured_history_tracks_exact_sparsity_and_metrics():
    data = make_data()
    model = make_model()
    opt = torch.optim.SGD(model.parameters(), lr=0.5, momentum=0.9)
    train(model, opt, data, steps=30)
    result = schedule.iterative(model, 0.8, 0.25, kind="unstructured",
                                finetune=lambda m, o: train(m, o, data, steps=5),
                                optimizer=opt, evaluate=lambda m: accuracy(m, data),
                                exclude=("4",), progress=False)
    history = result.history
    assert [s.index for s in history.steps] == list(range(len(history.steps)))
    rep = masks.report(model)
    masked = [layer for layer in rep.layers if layer.masked]
    assert sum(x.zeros for x in masked) == round(0.8 * sum(x.total for x in masked))
    assert history.final.sparsity == rep.sparsity < 0.8  # the dense classifier counts too
    assert [s.removed for s in history.steps[1:]] == list(schedule.milestones(0.8, 0.25))
    sparsities = [s.sparsity for s in history.steps]
    assert sparsities == sorted(sparsities)
    assert history.steps[0].metric == accuracy(make_trained(data), data)
    assert history.final.metric == accuracy(model, data)
    assert all(s.pruned_metric is not None for s in history.steps[1:])
    assert not rep["4"].masked and rep["4"].zeros == 0
    assert "Step(0:" in repr(history) and history.final.macs_keep == 1.0


def make_trained(data):
    model = make_model()
    train(model, torch.optim.SGD(model.parameters(), lr=0.5, momentum=0.9), data, steps=30)
    return model


def test_bad_arguments_raise_schedule_errors():
    model = make_model()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    def run(**kw):
        args = dict(kind="unstructured", finetune=lambda m, o: None, optimizer=opt,
                    progress=False)
        return schedule.iterative(model, kw.pop("target", 0.5), kw.pop("step", 0.1),
                                  **{**args, **kw})
    with pytest.raises(schedule.ScheduleError, match="1.2"):
        run(target=1.2)
    with pytest.raises(schedule.ScheduleError, match="step must be > 0"):
        run(step=0.0)
    with pytest.raises(schedule.ScheduleError, match="'channels'"):
        run(kind="channels")
    with pytest.raises(schedule.ScheduleError, match="finetune"):
        run(finetune="train")
    with pytest.raises(schedule.ScheduleError, match="Optimizer"):
        run(optimizer=[opt])
    with pytest.raises(schedule.ScheduleError, match="example_inputs"):
        run(kind="structured")
    assert not masks.masks_of(model)


def test_structured_rebuilds_optimizer_over_smaller_parameters_keeping_groups():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(1, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(),
                          nn.Conv2d(16, 16, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1),
                          nn.Flatten(), nn.Linear(16, 3))
    g = torch.Generator().manual_seed(0)
    x = torch.randn(32, 1, 6, 6, generator=g)
    data = (x, (x.mean(dim=(1, 2, 3)) > 0).long())
    biases = [p for n, p in model.named_parameters() if n.endswith("bias")]
    others = [p for n, p in model.named_parameters() if not n.endswith("bias")]
    opt = torch.optim.SGD([{"params": others, "weight_decay": 1e-3},
                           {"params": biases, "weight_decay": 0.0}], lr=0.3, momentum=0.9)
    train(model, opt, data, steps=3)
    recorder = Recorder(data)
    result = schedule.iterative(model, 0.5, 0.3, kind="structured", finetune=recorder,
                                optimizer=opt, example_inputs=x[:1], progress=False)
    assert result.optimizer is not opt and type(result.optimizer) is torch.optim.SGD
    for call in recorder.calls:
        assert call["owns_model"] and call["state"] == {}
        assert call["lrs"] == pytest.approx([0.03, 0.03])
    groups = result.optimizer.param_groups
    assert [g["weight_decay"] for g in groups] == [1e-3, 0.0]
    assert {id(p) for p in groups[1]["params"]} == {
        id(p) for n, p in result.model.named_parameters() if n.endswith("bias")}
    assert result.model[0].out_channels < 16 and result.model[7].out_features == 3
    history = result.history
    keeps = [s.macs_keep for s in history.steps]
    assert keeps == sorted(keeps, reverse=True) and keeps[-1] < 0.5
    assert history.final.removed == pytest.approx(0.5, abs=0.07)
    assert result.model(x).shape == (32, 3)
