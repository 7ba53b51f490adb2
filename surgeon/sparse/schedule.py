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

import dataclasses
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn as nn
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn

from . import masks
from ..api import plan as make_plan
from ..config import Config, make_config
from ..core.plan import Plan
from ..distributed import broadcast_object, is_main, rewrap, unwrap
from ..util import count_macs, count_params
from .history import History, ScheduleError, Step, milestones

__all__ = ["History", "IterativeResult", "ScheduleError", "Step", "iterative", "milestones"]

Inputs = torch.Tensor | tuple[torch.Tensor, ...]


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
    module = unwrap(model)
    config = dataclasses.replace(options["config"], ratio=ratio)
    plan_json = make_plan(module, config, example_inputs).to_json() if is_main() else None
    plan = Plan.from_json(broadcast_object(plan_json))
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
              exclude: Iterable[str] = (), config: Config | None = None,
              progress: bool = True, **options: Any) -> IterativeResult:
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
        config: a :class:`surgeon.Config` for each structured step (its ratio is replaced by
            the step's); or give its fields as keyword ``options`` (``round_to=8`` …).
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
    settings = make_config(config if config is not None else 0.0, options)
    options = (dict(scope=scope, include=include, exclude=tuple(exclude)) if kind == "unstructured"
               else dict(config=settings))
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
