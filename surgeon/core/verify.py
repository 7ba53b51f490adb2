"""Mask-equivalence: the slim model computes what the original computes with the removed indices
zeroed in every coupled slice (producer rows and biases, norm affine entries, consumer columns).

Groups whose removal is not exact (LayerNorm / softmax / mean over the removed channels) cannot be
compared by zeroing; the reference model *removes* those and zeroes the exact ones, so the check
still runs on the real slim model and covers every exact group. The report says which groups were
checked and which were not, and why.
"""
from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Any

from torch import nn
from torch._subclasses.fake_tensor import FakeTensorMode

from ..errors import PlanError, VerificationError
from ..util import Inputs, as_inputs, infer_inputs, outputs, prefer_fake, relative_error
from .plan import Plan
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

    def __repr__(self) -> str:
        verdict = "OK" if self.ok else "FAILED"
        warning = "; WARNING: the outputs are constant, so this check proves nothing" if self.constant else ""
        return (f"Report({verdict}: max rel. error {self.max_rel_error:.2e} (tol {self.tolerance:g}), "
                f"{len(self.checked)} pruned groups checked, {len(self.unchecked)} inexact not checked{warning})")


def output_shapes(model: nn.Module, inputs: Inputs) -> list[tuple[int, ...]]:
    """Shapes of `outputs(model, inputs)`: for a large model from fake tensors (no arithmetic)
    when every op allows, else from a real run — whose error, if any, is the one raised."""
    if prefer_fake(model):
        try:
            with FakeTensorMode(allow_non_fake_inputs=True) as mode:
                return [tuple(t.shape) for t in outputs(model, inputs.map(mode.from_tensor))]
        except Exception:  # no fake kernel, or a real failure the real run below reports
            pass
    return [tuple(t.shape) for t in outputs(model, inputs)]


def verify(original: nn.Module, slim: nn.Module, example_inputs: Any = None, *,
           plan: Plan | None = None, tolerance: float = 1e-4, strict: bool = False) -> Report:
    """Check that `slim` equals `original` with the removed indices zeroed (float tolerance).

    Args:
        original: the unpruned model.
        slim: the model returned by `surgeon.slim` (or `plan.apply`).
        example_inputs: inputs to compare on; defaults to those `surgeon.slim` was given
            (`slim.surgeon_inputs`), else inferred for vision models.
        plan: the plan that made `slim`; defaults to the one it carries (`slim.surgeon_plan`,
            set by `surgeon.slim` and `Plan.apply`).
        tolerance: largest accepted relative error max|slim − reference| / max|reference|.
        strict: raise `VerificationError` instead of returning a failing report.

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
    reference = copy.deepcopy(original)
    rebuild(reference, plan, reference=True)
    expected, got = outputs(reference, inputs), outputs(slim, inputs)
    shapes_equal = [t.shape for t in expected] == [t.shape for t in got]
    err = max((relative_error(a, b) for a, b in zip(got, expected)), default=0.0) if shapes_equal else float("inf")
    pruned = [(g, r) for g, r in zip(plan.groups, plan.removed) if r]
    report = Report(
        ok=shapes_equal and err <= tolerance,
        max_rel_error=err,
        tolerance=tolerance,
        checked=tuple(g.id for g, _ in pruned if g.exact),
        unchecked=tuple((g.id, g.inexact_why[0]) for g, _ in pruned if not g.exact),
        shapes_equal=shapes_equal,
        constant=all(t.numel() < 2 or bool((t == t.flatten()[0]).all()) for t in expected),
    )
    if strict and not report.ok:
        raise VerificationError(repr(report))
    return report
