"""What iterative pruning and lottery tickets record: one `Step` per prune (+ fine-tune), a `History`."""
from __future__ import annotations

from dataclasses import dataclass

from rich.table import Table

from ..errors import SurgeonError
from . import masks

__all__ = ["Step", "History", "ScheduleError", "milestones"]


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
