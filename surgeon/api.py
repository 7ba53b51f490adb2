"""The structural verbs: `plan`, `slim`, `analyze` — each runs the core stages in order.

Options come as a `Config` or as keywords (the fields of `Config`); both are checked once.
"""
from __future__ import annotations

import dataclasses
from collections.abc import Iterable
from typing import Any

import numpy as np
from torch import fx, nn

from .config import Config, make_config
from .core.budget import choose
from .core.calibrate import Calibration, LossFn, Stats
from .core.compensate import plan_shifts
from .core.groups import Coupling
from .core.plan import Plan
from .core.propagate import propagate
from .core.rank import score_units
from .core.rebuild import INPUTS_ATTR, PLAN_ATTR, TIMINGS_ATTR, Undo, clone, rebuild
from .core.trace import traced
from .core.verify import output_shapes
from .errors import SurgeonError
from .report import print_analysis
from .stages import Stages
from .util import model_inputs, warn

__all__ = ["plan", "slim", "analyze"]

MAX_RETRIES = 64
"""Modules `slim` may keep whole (a failing module's class at a time) before giving up on a
torch.export graph."""


def _decide(model: nn.Module, graphs: list[fx.GraphModule], config: Config, stages: Stages,
            keep: dict[str, str], data: Calibration) -> Plan:
    with stages.stage("propagate"):
        coupling = Coupling(propagate(model, graphs, config, keep=keep))
    stats = data.gather(model, graphs[0], coupling, stages)
    with stages.stage("rank"):
        scores = score_units(model, coupling, config.importance, stats=stats)
    p, removed = choose(model, graphs[0], coupling, scores, config, stages)
    return _compensated(p, model, graphs[0], coupling, stats, removed) if config.compensate else p


def _compensated(p: Plan, model: nn.Module, gm: fx.GraphModule, coupling: Coupling, stats: Stats,
                 removed: np.ndarray) -> Plan:
    """`p` with bias compensation at every layer reading removed units; those it cannot
    compensate are warned about (their removed inputs count as zero, as without it)."""
    shifts, skipped = plan_shifts(model, gm, coupling, stats, removed)
    if skipped:
        listed = "; ".join(f"{k}: {v}" for k, v in list(skipped.items())[:4])
        warn(f"compensate: {len(skipped)} layers reading removed units keep them at zero ({listed}"
             f"{' …' if len(skipped) > 4 else ''})")
    return dataclasses.replace(p, shifts=shifts)


def _failing_module(model: nn.Module, error: BaseException) -> str | None:
    """Path of the innermost submodule of `model` whose `forward` raised `error`."""
    paths = {id(m): p for p, m in model.named_modules() if p}
    found, tb = None, error.__traceback__
    while tb is not None:
        found = paths.get(id(tb.tb_frame.f_locals.get("self")), found)
        tb = tb.tb_next
    return found


def plan(model: nn.Module, ratio: float | Config | None = None, example_inputs: Any = None, *,
         calibration: Iterable[Any] | None = None, loss_fn: LossFn | None = None,
         progress: bool | None = None, **options: Any) -> Plan:
    """Decide what `slim` would remove (same options and data), without touching the model.

    Example:
        >>> p = surgeon.plan(torchvision.models.resnet18(), 0.5)
        >>> slim = p.apply(model)
    """
    config = make_config(ratio, options)
    inputs = model_inputs(model, example_inputs)
    data = Calibration.of(config.importance, calibration, loss_fn, inputs, compensate=config.compensate)
    stages = Stages(show=progress)
    try:
        return _decide(model, traced(model, inputs, config, stages)[0], config, stages, {}, data)
    finally:
        stages.close()


def slim(model: nn.Module, ratio: float | Config | None = None, example_inputs: Any = None, *,
         calibration: Iterable[Any] | None = None, loss_fn: LossFn | None = None,
         inplace: bool = False, progress: bool | None = None, **options: Any) -> nn.Module:
    """Physically remove `ratio` of every prunable group's channels — or meet a global budget
    (`target_macs=` / `target_params=`); same class, same output shape.

    Args:
        model: any fx-traceable module (torchvision CNNs work as they are).
        ratio: fraction of each coupled group's units removed, in [0, 1) (rounded down; each
            group keeps at least one unit) — or a `surgeon.Config` holding it and the options.
            Leave it out when giving `target_macs` or `target_params`.
        example_inputs: a tensor, a tuple of tensors, or a dict of keyword arguments; inferred
            (1×C×224×224) for vision models.
        calibration: data for the data-aware importances ("taylor", "activation",
            "fluctuation", a `surgeon.Criterion`): an iterable of batches, each the model's
            inputs as `example_inputs` takes them (any batch size) or an (inputs, targets)
            pair. Run in eval mode, without gradients unless the criterion needs them; the
            model is left as it was.
        loss_fn: `loss_fn(output, targets) -> scalar` for gradient criteria; default: the
            mean squared output without targets, cross-entropy with class targets.
        inplace: modify `model` itself instead of a deep copy (restored if anything fails).
        progress: show a progress line for stages running over a second (default: when
            stderr is a terminal).
        **options: the fields of `surgeon.Config` — `target_macs` / `target_params` (what
            to keep: a fraction in (0, 1] or a count; units compete across groups, each group
            losing at most `max_ratio`, default 0.9), `ignore`, `importance` ("l2", "l1",
            "random" or a callable), `round_to`, `prune_heads`, `prune_head_dims`,
            `prune_embed`, `prune_kv_heads`, `leaf_modules`, `frontend`, `compensate` (bias
            compensation: removed units replaced by their calibration means; needs
            `calibration=`).

    Returns:
        The slim model; it carries its plan (`slim.surgeon_plan`), so
        `surgeon.verify(model, slim)` checks mask-equivalence, and the seconds each stage
        took (`slim.surgeon_timings`).

    Example:
        >>> slim = surgeon.slim(torchvision.models.resnet50(), 0.5)
        >>> slim = surgeon.slim(model, surgeon.Config(0.5, round_to=8))
        >>> slim = surgeon.slim(model, target_macs=0.5)  # half the MACs; slim.surgeon_plan.ratios
        >>> slim = surgeon.slim(model, 0.5, calibration=batches, compensate=True)
    """
    config = make_config(ratio, options)
    inputs = model_inputs(model, example_inputs)
    data = Calibration.of(config.importance, calibration, loss_fn, inputs, compensate=config.compensate)
    stages = Stages(show=progress)
    keep: dict[str, str] = {}
    try:
        graphs, expected = traced(model, inputs, config, stages)
        with stages.stage("rebuild"):
            target = model if inplace else clone(model)
        while True:
            p = _decide(model, graphs, config, stages, keep, data)
            undo = Undo([], [])
            try:
                with stages.stage("rebuild"):
                    rebuild(target, p, undo=undo)
                with stages.stage("check"):
                    got = output_shapes(target, inputs)
                if got != expected:
                    raise SurgeonError(f"output shapes changed from {expected} to {got}: please report this model")
                break
            except Exception as e:
                undo()
                if not _retry(target, graphs, e, keep):
                    if isinstance(e, SurgeonError):
                        raise
                    raise SurgeonError(f"the slim {type(model).__name__} does not run ({e}); the model is "
                                       "unchanged") from e
    finally:
        stages.close()
    setattr(target, PLAN_ATTR, p)
    setattr(target, INPUTS_ATTR, inputs)
    setattr(target, TIMINGS_ATTR, dict(stages.seconds))
    return target


def _retry(target: nn.Module, graphs: list[fx.GraphModule], error: BaseException, keep: dict[str, str]) -> bool:
    """After a failed run of a slim model traced by torch.export (whose literal sizes may be
    numbers its `forward` computes otherwise), keep the channels of the module that failed and
    try again; False when there is nothing to retry (fx graphs are exact: that is a bug)."""
    exported = any(n.meta.get("baked") for n in graphs[0].graph.nodes)
    culprit = _failing_module(target, error) if exported else None
    if culprit is None or culprit in keep or len(keep) >= MAX_RETRIES:
        return False
    first = (str(error).strip().splitlines() or [type(error).__name__])[0][:200]
    cls = type(target.get_submodule(culprit))
    same = [path for path, m in target.named_modules() if type(m) is cls]
    if not any(path in keep for path in same):  # first failure of this class: keep that module only
        keep[culprit] = f"{cls.__name__} '{culprit}' does not run once its channels leave ({first})"
        return True
    for path in same:  # a second one fails the same way: keep them all
        keep[path] = (f"{cls.__name__} '{culprit}' does not run once its channels leave ({first}); "
                      f"every {cls.__name__} keeps its channels")
    return True


def analyze(model: nn.Module, example_inputs: Any = None, *, ratio: float | Config | None = None,
            show: bool = True, progress: bool | None = None, **options: Any) -> Plan:
    """Print which groups can be pruned, which are frozen and why; return the plan at `ratio`
    (default 0.5), or for a budget (`target_macs=` / `target_params=`: the table shows the
    ratio each group loses).

    Takes the options and data of `plan` (a `Config` as `ratio`, or keywords; `calibration=`,
    `loss_fn=`).

    Example:
        >>> surgeon.analyze(torchvision.models.squeezenet1_0())
        >>> surgeon.analyze(model, target_macs=0.5)
    """
    if ratio is None and options.get("target_macs") is None and options.get("target_params") is None:
        ratio = 0.5
    p = plan(model, ratio, example_inputs, progress=progress, **options)
    if show:
        print_analysis(model, p)
    return p

