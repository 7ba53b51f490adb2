"""Iterative pruning: prune a step, fine-tune at a lowered learning rate, repeat to the target.

Two kinds share one loop. ``"unstructured"`` grows magnitude masks (:mod:`surgeon.masks`);
``"structured"`` removes channels with :func:`surgeon.plan` and rebuilds the optimizer over
the new, smaller parameters. Inside a DDP job the decision (mask or plan) is taken on rank 0
and broadcast, and DDP is rebuilt after each structured step.

Example:
    >>> from surgeon import schedule
    >>> opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    >>> result = schedule.iterative(model, 0.8, 0.1, kind="unstructured", finetune=train_epoch,
    ...                             optimizer=opt, evaluate=accuracy)
    >>> result.history.final.sparsity
    0.8
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass

import torch
import torch.nn as nn
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn
from rich.table import Table

from . import masks
from .distributed import broadcast_object, is_main, rewrap, unwrap
from .errors import SurgeonError
from .measure import count_macs, count_params

__all__ = ["History", "IterativeResult", "ScheduleError", "Step", "iterative", "milestones"]

Inputs = torch.Tensor | tuple[torch.Tensor, ...]


class ScheduleError(SurgeonError, ValueError):
    """Bad input to a schedule (target out of range, unknown kind, missing inputs …)."""


@dataclass(frozen=True)
class Step:
    """One point of a schedule: the model after pruning step ``index`` and its fine-tuning.

    Attributes:
        index: 0 for the model before pruning, then 1, 2, …
        removed: the fraction removed so far: of the masked layers' weights (unstructured),
            or of the prunable channels, counted from the plans (structured).
        sparsity: measured fraction of weights gone (masked, or removed parameters).
        macs_keep: measured MACs relative to the start (1.0 for masks: dense MACs don't change).
        metric: ``evaluate(model)`` after fine-tuning, if an ``evaluate`` was given.
        pruned_metric: ``evaluate(model)`` right after pruning, before fine-tuning.
        lr: the learning rate of the first parameter group during fine-tuning.
    """

    index: int
    removed: float
    sparsity: float
    macs_keep: float
    metric: float | None = None
    pruned_metric: float | None = None
    lr: float | None = None

    def __repr__(self) -> str:
        text = (f"Step({self.index}: removed {self.removed:.1%}, sparsity {self.sparsity:.1%}, "
                f"MACs {self.macs_keep:.1%}")
        if self.metric is not None:
            text += f", metric {self.metric:.4g}"
        if self.pruned_metric is not None:
            text += f" (pruned {self.pruned_metric:.4g})"
        return text + (f", lr {self.lr:.3g})" if self.lr is not None else ")")


@dataclass(frozen=True)
class History:
    """The steps of a schedule; ``rich.print(history)`` shows them as a table."""

    kind: str
    steps: tuple[Step, ...]

    @property
    def final(self) -> Step:
        """The last step."""
        return self.steps[-1]

    def __repr__(self) -> str:
        rows = "".join(f"\n  {step!r}" for step in self.steps)
        return f"History({self.kind}, {len(self.steps)} steps{rows})"

    def table(self) -> Table:
        """The history as a :class:`rich.table.Table`."""
        table = Table(title=f"{self.kind} pruning")
        for column in ("step", "removed", "sparsity", "MACs", "pruned", "metric", "lr"):
            table.add_column(column, justify="right")
        for s in self.steps:
            table.add_row(str(s.index), f"{s.removed:.1%}", f"{s.sparsity:.1%}",
                          f"{s.macs_keep:.1%}", _fmt(s.pruned_metric), _fmt(s.metric),
                          _fmt(s.lr))
        return table

    def __rich__(self) -> Table:
        return self.table()


@dataclass(frozen=True, eq=False)
class IterativeResult:
    """What :func:`iterative` hands back: the pruned model (a DDP wrapper if given one), the
    optimizer now driving it, and the history."""

    model: nn.Module
    optimizer: torch.optim.Optimizer
    history: History


def _status(step: Step) -> str:
    metric = "" if step.metric is None else f" · metric {step.metric:.4g}"
    return f"removed {step.removed:.1%} · MACs {step.macs_keep:.1%}{metric}"


def _fmt(value: float | None) -> str:
    return "" if value is None else f"{value:.4g}"


def milestones(target: float, step: float) -> tuple[float, ...]:
    """Cumulative fractions removed after each step: each step removes ``step`` of what is left,
    and the last one lands exactly on ``target``.

    Example:
        >>> milestones(0.5, 0.2)
        (0.2, 0.36, 0.488, 0.5)
    """
    target = masks.check_fraction("target", target, ScheduleError)
    step = masks.check_fraction("step", step, ScheduleError)
    if step == 0 and target > 0:
        raise ScheduleError(f"step must be > 0 to reach target {target}, got {step!r}")
    points: list[float] = []
    while not points or points[-1] < target - 1e-9:
        points.append(min(target, round(1 - (1 - step) ** (len(points) + 1), 12)))
    return tuple(points) if target > 0 else ()


def _set_lr(optimizer: torch.optim.Optimizer, base_lrs: list[float], scale: float) -> None:
    optimizer.state.clear()
    for group, lr in zip(optimizer.param_groups, base_lrs):
        group["lr"] = lr * scale


def _rebuild_optimizer(old: torch.optim.Optimizer, model: nn.Module,
                       group_of: dict[str, int]) -> torch.optim.Optimizer:
    """A fresh optimizer of the same type and settings over the model's new parameters; a
    parameter joins the group its name was in (group 0 if new)."""
    groups = [{**{k: v for k, v in g.items() if k != "params"}, "params": []}
              for g in old.param_groups]
    for name, param in unwrap(model).named_parameters():
        groups[group_of.get(name, 0)]["params"].append(param)
    return type(old)(groups, **old.defaults)


def _mask_step(model: nn.Module, removed: float, options: dict) -> None:
    module = unwrap(model)
    if is_main():
        masks.prune(module, removed, **options)
    chosen = broadcast_object(masks.masks_of(module) if is_main() else None)
    if not is_main():
        masks.apply(module, chosen)


def _slim_step(model: nn.Module, ratio: float, example_inputs: Inputs,
               options: dict) -> tuple[nn.Module, int, int]:
    """Removes ``ratio`` of the channels by rank 0's plan; returns the rewrapped model, the
    prunable channels before the step and the number removed."""
    import surgeon  # the package's public verbs; imported here as they import this module

    module = unwrap(model)
    plan_json = surgeon.plan(module, ratio, example_inputs, **options).to_json() if (
        is_main()) else None
    plan = surgeon.Plan.from_json(broadcast_object(plan_json))
    free = sum(group.units - group.frozen_units for group in plan.groups)
    if free == 0:
        raise ScheduleError(f"{type(module).__name__} has no prunable channels: "
                            "surgeon.analyze(model, example_inputs) shows why")
    return rewrap(plan.apply(module, inplace=True), like=model), free, sum(plan.removed)


def _step_ratio(milestone: float, units: tuple[int, int] | None) -> float:
    """The ratio of the current channels to remove so that, of the ``units[0]`` prunable
    channels at the start (``units[1]`` left now), ``milestone`` are gone: per-group rounding
    of earlier steps is made up here instead of adding up."""
    if units is None:
        return milestone
    start, now = units
    return max(0.0, 1 - (1 - milestone) * start / now)


def _measure(model: nn.Module, kind: str, inputs: Inputs | None, start: tuple[int, int],
             include: tuple[type[nn.Module], ...]) -> tuple[float, float]:
    """(sparsity, MACs keep) of the model now, against (parameters, MACs) at the start."""
    if kind == "unstructured":
        return masks.report(unwrap(model), include=include).sparsity, 1.0
    params, total_macs = start
    module = unwrap(model)
    return 1 - count_params(module) / params, count_macs(module, inputs) / total_macs


def _check_options(kind: str, finetune: object, optimizer: object, lr_scale: float,
                   example_inputs: Inputs | None) -> None:
    if kind not in ("structured", "unstructured"):
        raise ScheduleError(f"kind must be 'structured' or 'unstructured', got {kind!r}")
    if not callable(finetune):
        raise ScheduleError(f"finetune must be callable as finetune(model, optimizer), "
                            f"got {finetune!r}")
    if not isinstance(optimizer, torch.optim.Optimizer):
        raise ScheduleError(f"optimizer must be a torch.optim.Optimizer, got {optimizer!r}")
    if isinstance(lr_scale, bool) or not isinstance(lr_scale, (int, float)) or not (
            0 < lr_scale <= 1):
        raise ScheduleError(f"lr_scale must be in (0, 1], got {lr_scale!r}")
    if kind == "structured" and example_inputs is None:
        raise ScheduleError("structured pruning needs example_inputs (a tensor or a tuple of "
                            "tensors the model accepts) to trace the model and count MACs")


def iterative(model: nn.Module, target: float, step: float = 0.1, *, kind: str = "structured",
              finetune: Callable[[nn.Module, torch.optim.Optimizer], object],
              optimizer: torch.optim.Optimizer, lr_scale: float = 0.1,
              evaluate: Callable[[nn.Module], float] | None = None,
              example_inputs: Inputs | None = None, scope: str = "global",
              include: tuple[type[nn.Module], ...] = masks.DEFAULT_INCLUDE,
              exclude: Iterable[str] = (), ignore: Iterable[nn.Module] = (),
              importance: str | Callable = "l2", round_to: int = 1,
              progress: bool = True) -> IterativeResult:
    """Prunes ``model`` to ``target`` in steps, fine-tuning after each.

    Each step removes ``step`` of what is left (see :func:`milestones`), resets the optimizer's
    state (momentum, Adam moments), sets every group's learning rate to ``lr_scale`` times its
    value at the call, and calls ``finetune(model, optimizer)``. A learning-rate scheduler
    bound to the old optimizer is not carried over in structured mode.

    Args:
        model: the model, or a DDP wrapper of it (then every rank must call this).
        target: final fraction removed: weight sparsity (unstructured) or channel ratio
            (structured, as in :func:`surgeon.slim`), in [0, 1).
        step: the fraction of the current model removed per step, in (0, 1).
        kind: ``"structured"`` (channels, via :func:`surgeon.plan`) or ``"unstructured"``.
        finetune: ``finetune(model, optimizer)``, e.g. a few epochs of training.
        optimizer: the optimizer over ``model``'s parameters; rebuilt after structured steps.
        lr_scale: factor on the learning rate during fine-tuning.
        evaluate: ``evaluate(model) -> float``, recorded before and after fine-tuning.
        example_inputs: inputs for tracing and MAC counting (required when structured).
        scope, include, exclude: passed to :func:`surgeon.masks.prune` (unstructured).
        ignore, importance, round_to: passed to :func:`surgeon.plan` (structured).
        progress: show a rich progress bar (rank 0 only).

    Returns:
        An :class:`IterativeResult` with the model, its optimizer and the :class:`History`.

    Example:
        >>> res = schedule.iterative(model, 0.5, 0.2, finetune=train_epoch, optimizer=opt,
        ...                          example_inputs=torch.randn(1, 1, 8, 8))
        >>> res.history.final.macs_keep < 0.5
        True
    """
    milestone_list = milestones(target, step)
    _check_options(kind, finetune, optimizer, lr_scale, example_inputs)
    options = (dict(scope=scope, include=include, exclude=tuple(exclude)) if kind == "unstructured"
               else dict(ignore=tuple(ignore), importance=importance, round_to=round_to))
    base_lrs = [float(group["lr"]) for group in optimizer.param_groups]
    index_of = {id(p): i for i, g in enumerate(optimizer.param_groups) for p in g["params"]}
    group_of = {name: index_of.get(id(p), 0) for name, p in unwrap(model).named_parameters()}
    start = ((count_params(unwrap(model)), count_macs(unwrap(model), example_inputs))
             if kind == "structured" else (0, 0))
    sparsity, macs_keep = _measure(model, kind, example_inputs, start, include)
    steps = [Step(0, 0.0, sparsity, macs_keep, evaluate(model) if evaluate else None)]
    with Progress(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
                  TextColumn("{task.fields[status]}"), disable=not (progress and is_main()),
                  transient=False) as bar:
        task = bar.add_task(f"{kind} pruning", total=len(milestone_list),
                            status=_status(steps[0]))
        units = None
        for index, removed in enumerate(milestone_list, start=1):
            if kind == "unstructured":
                _mask_step(model, removed, options)
            else:
                model, free, gone = _slim_step(model, _step_ratio(removed, units),
                                               example_inputs, options)
                units = (units[0] if units else free, free - gone)
                removed = 1 - units[1] / units[0]
                optimizer = _rebuild_optimizer(optimizer, model, group_of)
            pruned_metric = evaluate(model) if evaluate else None
            _set_lr(optimizer, base_lrs, lr_scale)
            finetune(model, optimizer)
            sparsity, macs_keep = _measure(model, kind, example_inputs, start, include)
            steps.append(Step(index, removed, sparsity, macs_keep,
                              evaluate(model) if evaluate else None, pruned_metric,
                              optimizer.param_groups[0]["lr"]))
            bar.update(task, advance=1, status=_status(steps[-1]))
    return IterativeResult(model, optimizer, History(kind, tuple(steps)))
