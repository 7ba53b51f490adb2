"""Lottery Ticket rewinding: record weights, rewind the survivors of a mask, iterate (IMP).

A :class:`Snapshot` holds a model's parameters and buffers at one or more training steps, keyed
by the names a plain model uses (``fc.weight``, even when pruning has renamed the parameter
``fc.weight_orig``). :func:`rewind` copies them back while the masks stay, so a masked weight
stays zero and a surviving one takes its recorded value. :func:`imp` is iterative magnitude
pruning: train, mask the smallest weights, rewind, repeat.

Example:
    >>> from surgeon import lottery, masks
    >>> start = lottery.snapshot(model)
    >>> train(model)
    >>> masks.prune(model, 0.8, scope="global")
    >>> lottery.rewind(model, start)  # the 80 %-sparse ticket, back at its initial weights
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from types import MappingProxyType

import torch
import torch.nn as nn
from rich.progress import Progress

from . import masks
from ..distributed import is_main, unwrap
from ..errors import SurgeonError
from .history import History, Step, milestones

__all__ = ["IMPResult", "RewindError", "Snapshot", "imp", "rewind", "snapshot"]


class RewindError(SurgeonError, ValueError):
    """A snapshot does not fit the model, or has no such step."""


@dataclass(frozen=True)
class Snapshot:
    """Weights recorded at training steps: ``states[step][name]`` is a detached copy.

    Example:
        >>> snap = lottery.snapshot(model)                    # step 0
        >>> snap = lottery.snapshot(model, step=500, into=snap)
        >>> snap.steps
        (0, 500)
    """

    states: Mapping[int, Mapping[str, torch.Tensor]]

    @property
    def steps(self) -> tuple[int, ...]:
        """The recorded steps, in order."""
        return tuple(sorted(self.states))

    def __repr__(self) -> str:
        sizes = {step: sum(t.numel() for t in state.values())
                 for step, state in sorted(self.states.items())}
        return "Snapshot(" + ", ".join(f"step {s}: {n:,} values" for s, n in sizes.items()) + ")"


@dataclass(frozen=True, eq=False)
class IMPResult:
    """What :func:`imp` hands back: the rewound ticket (masked, untrained) and the history of
    the networks it trained on the way, one step per sparsity."""

    ticket: nn.Module
    history: History


def _plain_names(model: nn.Module) -> dict[str, torch.Tensor]:
    """State-dict entries under plain names: ``x.weight_orig`` as ``x.weight``, masks left out."""
    state = unwrap(model).state_dict(keep_vars=True)
    masked = {key[: -len("_mask")] for key in state
              if key.endswith("_mask") and key[: -len("_mask")] + "_orig" in state}
    plain = {}
    for key, tensor in state.items():
        if key.endswith("_mask") and key[: -len("_mask")] in masked:
            continue
        if key.endswith("_orig") and key[: -len("_orig")] in masked:
            key = key[: -len("_orig")]
        plain[key] = tensor
    return plain


def snapshot(model: nn.Module, *, step: int = 0, into: Snapshot | None = None) -> Snapshot:
    """Records the model's parameters and buffers at ``step`` (added to ``into`` if given).

    Example:
        >>> start = lottery.snapshot(model)
    """
    if isinstance(step, bool) or not isinstance(step, int) or step < 0:
        raise RewindError(f"step must be a non-negative int, got {step!r}")
    state = MappingProxyType({name: tensor.detach().clone()
                              for name, tensor in _plain_names(model).items()})
    states = dict(into.states) if into is not None else {}
    states[step] = state
    return Snapshot(MappingProxyType(states))


def rewind(model: nn.Module, snap: Snapshot, *, to_step: int = 0,
           buffers: bool = True) -> nn.Module:
    """Copies the weights recorded at ``to_step`` back into ``model``, keeping its masks.

    Surviving weights become bit-for-bit the recorded ones; masked weights stay zero.

    Args:
        model: the (masked) model, changed in place; same architecture as when recorded.
        snap: a :class:`Snapshot` of it.
        to_step: which recorded step to go back to.
        buffers: rewind buffers too (BatchNorm running statistics), not only parameters.

    Returns:
        ``model``.

    Raises:
        RewindError: no such step, or a name or shape that differs from the recording (a
            structurally slimmed model cannot be rewound to its wide snapshot).

    Example:
        >>> lottery.rewind(model, start).training
        True
    """
    if to_step not in snap.states:
        raise RewindError(f"no weights recorded at step {to_step!r}; recorded: {snap.steps}")
    recorded = snap.states[to_step]
    params = {name for name, _ in unwrap(model).named_parameters()}
    live = {name: tensor for name, tensor in _plain_names(model).items()
            if buffers or name in params or name + "_orig" in params}
    missing = sorted(set(live) - set(recorded))
    if missing:
        raise RewindError(f"the snapshot of step {to_step} has no {missing[:5]}")
    for name, tensor in live.items():
        if tensor.shape != recorded[name].shape:
            raise RewindError(f"{name} has shape {tuple(tensor.shape)} but was recorded with "
                              f"{tuple(recorded[name].shape)}")
    with torch.no_grad():
        for name, tensor in live.items():
            tensor.copy_(recorded[name])
    masks.apply(model, masks.masks_of(model))
    return model


def imp(model: nn.Module, target: float, *, train: Callable[[nn.Module], object],
        rate: float = 0.2, evaluate: Callable[[nn.Module], float] | None = None,
        start: Snapshot | None = None, to_step: int = 0, scope: str = "global",
        include: tuple[type[nn.Module], ...] = masks.DEFAULT_INCLUDE,
        exclude: Iterable[str] = (), progress: bool = True) -> IMPResult:
    """Iterative magnitude pruning: train, mask ``rate`` of the survivors, rewind; to ``target``.

    Args:
        model: the untrained model (or one at step ``to_step`` of ``start``), changed in place.
        target: final sparsity, in [0, 1).
        train: ``train(model)``, a full training run; it builds its own optimizer.
        rate: fraction of the surviving weights masked per round.
        evaluate: ``evaluate(model) -> float`` after each training run.
        start: the snapshot to rewind to; taken from ``model`` now if not given.
        to_step: the step of ``start`` to rewind to (late rewinding).
        scope, include, exclude: passed to :func:`surgeon.masks.prune`.
        progress: show a rich progress bar (rank 0 only).

    Returns:
        An :class:`IMPResult`: the ticket at ``target`` sparsity, rewound and ready to train,
        and a :class:`History` of the trained networks (step ``i`` was trained at the
        sparsity of round ``i``).

    Example:
        >>> res = lottery.imp(model, 0.8, train=train, evaluate=accuracy)
        >>> train(res.ticket)
    """
    rounds = milestones(target, masks.check_fraction("rate", rate, RewindError))
    start = start if start is not None else snapshot(model, step=to_step)
    steps = []
    with Progress(disable=not (progress and is_main())) as bar:
        task = bar.add_task("iterative magnitude pruning", total=len(rounds))
        reached = masks.report(model, include=include).sparsity
        for index, sparsity in enumerate(rounds):
            train(model)
            steps.append(Step(index, reached, reached, 1.0,
                              evaluate(model) if evaluate else None))
            reached = masks.prune(model, sparsity, scope=scope, include=include,
                                  exclude=exclude).sparsity
            rewind(model, start, to_step=to_step)
            bar.update(task, advance=1, description=f"IMP: {reached:.1%} sparse")
    return IMPResult(model, History("IMP", tuple(steps)))
