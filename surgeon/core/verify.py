"""Mask-equivalence: the slim model computes what the original computes with the removed indices
zeroed in every coupled slice (producer rows and biases, norm affine entries, consumer columns).

Groups whose removal is not exact (LayerNorm / softmax / mean over the removed channels) cannot be
compared by zeroing; the reference model *removes* those and zeroes the exact ones, so the check
still runs on the real slim model and covers every exact group. The report says which groups were
checked and which were not, and why.

A check can pass vacuously: where the weights make a group's removed channels matter too little
(a layer scale of 1e-6, a zero-initialised norm), zeroing them changes nothing the tolerance can
see. So each checked group is *probed*: its removed parameter slices are given back their
original values in the reference (every other group's stay zeroed) and the relative change of
the output is measured; a group changing it by no more than the tolerance is *uninformative*.

With bias compensation (`plan.shifts`) the reference holds the removed inputs of each exactly
compensated layer at their calibration means (`core.compensate.holding`) instead of zeroing its
columns; an approximate shift (a zero-padded conv) is applied to the reference as the slim
model applies it, and reported.
"""
from __future__ import annotations

import copy
import math
import time
from collections import defaultdict
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass, replace
from typing import Any

import numpy as np
import torch
from torch import nn
from torch._subclasses.fake_tensor import FakeTensorMode

from ..errors import PlanError, VerificationError
from ..shapes import shape_run
from ..util import Inputs, as_inputs, infer_inputs, outputs, prefer_fake, relative_error, warn
from .compensate import holding, reference_plan
from .plan import Cut, Plan
from .rebuild import INPUTS_ATTR, PLAN_ATTR, rebuild

__all__ = ["Report", "verify", "output_shapes"]


@dataclass(frozen=True)
class Report:
    """Outcome of a mask-equivalence check."""

    ok: bool
    max_rel_error: float
    tolerance: float
    checked: tuple[int, ...]
    unchecked: tuple[tuple[int, str], ...]
    shapes_equal: bool
    constant: bool = False
    """Every reference output is one repeated value (e.g. a zero-initialised classifier): the
    comparison cannot see the removed channels, so an OK proves nothing."""
    uninformative: tuple[int, ...] = ()
    """Checked groups whose removed slices, given back their original values, change the
    output by no more than the tolerance: on these weights the check cannot see them."""
    probed: int = 0
    """How many checked groups were probed one by one (the rest only all together)."""
    compensated: tuple[str, ...] = ()
    """Layers whose bias compensates removed units, checked against the original with those
    units held at their calibration means."""
    approximate: tuple[tuple[str, str], ...] = ()
    """Layers whose compensation a bias cannot make exact (layer, why): the reference applies
    it as the slim model does, so it is not checked."""

    def __repr__(self) -> str:
        verdict = "OK" if self.ok else "FAILED"
        warning = "; WARNING: the outputs are constant, so this check proves nothing" if self.constant else ""
        weak = f", {len(self.uninformative)} uninformative" if self.uninformative else ""
        shifts = (f", {len(self.compensated)} biases compensated at the means ({len(self.approximate)} "
                  "more approximately)") if self.compensated or self.approximate else ""
        return (f"Report({verdict}: max rel. error {self.max_rel_error:.2e} (tol {self.tolerance:g}), "
                f"{len(self.checked)} pruned groups checked{weak}, {len(self.unchecked)} inexact not "
                f"checked{shifts}{warning})")


def output_shapes(model: nn.Module, inputs: Inputs) -> list[tuple[int, ...]]:
    """Shapes of `outputs(model, inputs)`: for a model on meta from fake tensors when every op
    allows, else from `shape_run` (heavy layers computing shapes only; a real run if that
    fails, whose error, if any, is the one raised)."""
    if prefer_fake(model):
        try:
            with FakeTensorMode(allow_non_fake_inputs=True) as mode:
                return [tuple(t.shape) for t in outputs(model, inputs.map(mode.from_tensor))]
        except Exception:  # no fake kernel, or a real failure the real run below reports
            pass
    return shape_run(model, lambda: [tuple(t.shape) for t in outputs(model, inputs)])


def _probe_value(original: torch.Tensor, cuts: list[Cut], given_back: set[int]) -> torch.Tensor:
    """A reference parameter with the removed slices of `given_back` groups left as they were:
    the others zeroed, inexact removals dropped (as `rebuild(..., reference=True)` does)."""
    with torch.no_grad():
        t = original.detach().clone()
        for cut in cuts:
            zero = [i for i, g in zip(cut.remove, cut.groups) if g not in given_back]
            if zero:
                t.index_fill_(cut.dim, torch.tensor(zero, device=t.device), 0)
        for cut in cuts:
            if cut.inexact:
                kept = np.setdiff1d(np.arange(cut.size), cut.inexact)
                t = t.index_select(cut.dim, torch.from_numpy(kept).to(t.device))
    return t


@contextmanager
def _given_back(original: nn.Module, reference: nn.Module, by_tensor: dict[str, list[Cut]],
                groups: set[int]) -> Iterator[None]:
    """The reference with `groups`' removed slices of the parameters in `by_tensor` given back,
    then zeroed again."""
    swapped = []
    try:
        for name, cuts in by_tensor.items():
            param = reference.get_parameter(name)
            swapped.append((param, param.data))
            param.data = _probe_value(original.get_parameter(name), cuts, groups)
        yield
    finally:
        for param, data in swapped:
            param.data = data


NOISE_MARGIN = 10.0
"""A probed group is seen by the check when giving it back moves the output by more than ten
times the error measured (a slim model mishandling it would show an error that large) and ten
times the output dtype's resolution; never a stricter demand than the tolerance."""


def _uninformative(original: nn.Module, reference: nn.Module, plan: Plan, inputs: Inputs,
                   expected: list[torch.Tensor], checked: tuple[int, ...], tolerance: float,
                   seconds: float, hold: Callable[[set[int]], AbstractContextManager]) -> tuple[tuple[int, ...], int]:
    """Checked groups whose removed slices change the output by at most `tolerance` (what the
    check can tell apart from the error it measured), and how
    many were probed one by one: all of them together first (one forward), then each on its
    own for as many as `seconds` allow. `hold(groups)` releases those groups' held means."""
    params = dict(original.named_parameters())
    by_tensor: dict[str, list[Cut]] = defaultdict(list)
    touches: dict[int, set[str]] = defaultdict(set)
    for cut in plan.cuts:
        if cut.groups and cut.tensor in params:  # buffers (running statistics) are never zeroed
            by_tensor[cut.tensor].append(cut)
            for g in set(cut.groups):
                touches[g].add(cut.tensor)

    def change(groups: set[int]) -> float:
        names = set().union(*(touches[g] for g in groups))
        with _given_back(original, reference, {n: by_tensor[n] for n in names}, groups), hold(groups):
            got = outputs(reference, inputs)
        return max((relative_error(a, b) for a, b in zip(got, expected)), default=0.0)

    start = time.perf_counter()
    if change(set(checked)) <= tolerance:
        return checked, 0
    each = time.perf_counter() - start
    n = len(checked) if math.isinf(seconds) else min(len(checked), int(seconds / max(each, 1e-9)))
    return tuple(g for g in checked[:n] if change({g}) <= tolerance), n


def _shifted(original: nn.Module, plan: Plan) -> nn.Module:
    """What probes give slices back from: the original, with the approximate bias shifts the
    reference also carries."""
    approximate = tuple(s for s in plan.shifts if s.approximate)
    if not approximate:
        return original
    base = copy.deepcopy(original)
    rebuild(base, replace(plan, cuts=(), sizes=(), shifts=approximate), reference=True)
    return base


def verify(original: nn.Module, slim: nn.Module, example_inputs: Any = None, *,
           plan: Plan | None = None, tolerance: float = 1e-4, strict: bool = False,
           probe_seconds: float = 5.0) -> Report:
    """Check that `slim` equals `original` with the removed indices zeroed (float tolerance) —
    or, for layers whose bias compensates them (`compensate=True`), held at their calibration
    means (`Report.compensated`; zero-padded convs, where a bias is not exact, are listed in
    `Report.approximate` and not checked).

    Args:
        original: the unpruned model.
        slim: the model returned by `surgeon.slim` (or `plan.apply`).
        example_inputs: inputs to compare on; defaults to those `surgeon.slim` was given
            (`slim.surgeon_inputs`), else inferred for vision models.
        plan: the plan that made `slim`; defaults to the one it carries (`slim.surgeon_plan`,
            set by `surgeon.slim` and `Plan.apply`).
        tolerance: largest accepted relative error max|slim − reference| / max|reference|.
        strict: raise `VerificationError` instead of returning a failing report.
        probe_seconds: time allowed for probing checked groups one by one (one forward each,
            in plan order) for being uninformative; `math.inf` probes every one, 0 only all
            of them together. Uninformative groups are recorded and warned about.

    Example:
        >>> slim = surgeon.slim(model, 0.5)
        >>> surgeon.verify(model, slim).ok
        True
    """
    plan = plan if plan is not None else getattr(slim, PLAN_ATTR, None)
    if plan is None:
        raise PlanError("this model carries no surgeon plan (it was not made by surgeon.slim or "
                        "Plan.apply): pass plan=surgeon.plan(...)")
    if example_inputs is None:
        recorded = getattr(slim, INPUTS_ATTR, None)
        inputs = recorded if recorded is not None else infer_inputs(original)
    else:
        inputs = as_inputs(example_inputs)
    ref_plan = reference_plan(plan)
    reference = copy.deepcopy(original)
    rebuild(reference, ref_plan, reference=True)
    with holding(reference, plan):
        expected = outputs(reference, inputs)
    got = outputs(slim, inputs)
    shapes_equal = [t.shape for t in expected] == [t.shape for t in got]
    err = max((relative_error(a, b) for a, b in zip(got, expected)), default=0.0) if shapes_equal else float("inf")
    pruned = [(g, r) for g, r in zip(plan.groups, plan.removed) if r]
    checked = tuple(g.id for g, _ in pruned if g.exact)
    weak, probed = (), 0
    if checked and shapes_equal and any(c.groups for c in plan.cuts):
        eps = max((torch.finfo(t.dtype).eps for t in expected if t.is_floating_point()), default=0.0)
        seen = min(tolerance, NOISE_MARGIN * max(err, eps))
        weak, probed = _uninformative(_shifted(original, plan), reference, ref_plan, inputs, expected,
                                      checked, seen, probe_seconds,
                                      lambda groups: holding(reference, plan, released=groups))
    report = Report(
        ok=shapes_equal and err <= tolerance,
        max_rel_error=err,
        tolerance=tolerance,
        checked=checked,
        unchecked=tuple((g.id, g.inexact_why[0]) for g, _ in pruned if not g.exact),
        shapes_equal=shapes_equal,
        constant=all(t.numel() < 2 or bool((t == t.flatten()[0]).all()) for t in expected),
        uninformative=weak,
        probed=probed,
        compensated=tuple(s.module for s in plan.shifts if not s.approximate),
        approximate=tuple((s.module, s.approximate) for s in plan.shifts if s.approximate),
    )
    if weak:
        warn(f"verify: {len(weak)} of {len(checked)} checked groups are uninformative (ids "
             f"{list(weak[:8])}{' …' if len(weak) > 8 else ''}): giving their removed channels back "
             f"changes the output by at most {seen:.1e} (ten times the error measured, at most the "
             f"tolerance {tolerance:g}), so on these weights the check cannot see them (near-zero layer scales or norm weights?)")
    if strict and not report.ok:
        raise VerificationError(repr(report))
    return report
