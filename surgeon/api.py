"""The structural verbs: `plan`, `slim`, `analyze`."""
from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import fx, nn
from torch.utils._pytree import tree_leaves

from .errors import SurgeonError
from .groups import Coupling, couple
from .importance import Importance, check_importance, score_units
from .plan import Plan, make_plan, select
from .rebuild import Undo, clone, rebuild
from .trace import as_inputs, infer_inputs, modes_kept, trace
from .verify import remember

__all__ = ["plan", "slim", "analyze", "check_ratio"]

Ignore = Sequence[nn.Module | str]
Leaves = Sequence[type | str]


def check_ratio(ratio: object) -> float:
    """`ratio` as a float in [0, 1), or ValueError naming the value."""
    if isinstance(ratio, bool) or not isinstance(ratio, (int, float)) or not 0 <= ratio < 1:
        raise ValueError(f"ratio must be a number in [0, 1), got {ratio!r}")
    return float(ratio)


def _inputs(model: nn.Module, example_inputs: Any) -> tuple[torch.Tensor, ...]:
    return infer_inputs(model) if example_inputs is None else as_inputs(example_inputs)


def _analyse(model: nn.Module, inputs: tuple[torch.Tensor, ...], ignore: Ignore,
             leaf_modules: Leaves) -> tuple[list[fx.GraphModule], Coupling]:
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    graphs = trace(model, inputs, leaf_modules=leaf_modules)
    return graphs, couple(model, graphs, ignore=ignore)


def plan(model: nn.Module, ratio: float, example_inputs: Any = None, *, ignore: Ignore = (),
         importance: Importance = "l2", round_to: int = 1, leaf_modules: Leaves = ()) -> Plan:
    """Decide what `slim` would remove, without touching the model.

    Example:
        >>> p = surgeon.plan(torchvision.models.resnet18(), 0.5)
        >>> slim = p.apply(model)
    """
    return _plan(model, ratio, _inputs(model, example_inputs), ignore, importance, round_to, leaf_modules)[0]


def _plan(model: nn.Module, ratio: float, inputs: tuple[torch.Tensor, ...], ignore: Ignore,
          importance: Importance, round_to: int, leaf_modules: Leaves) -> tuple[Plan, list[tuple[int, ...]]]:
    """The plan, and the output shapes seen while tracing."""
    ratio = check_ratio(ratio)
    check_importance(importance)
    if isinstance(round_to, bool) or not isinstance(round_to, int) or round_to < 1:
        raise ValueError(f"round_to must be a positive integer, got {round_to!r}")
    graphs, coupling = _analyse(model, inputs, ignore, leaf_modules)
    removed = select(coupling, score_units(model, coupling, importance), ratio, round_to=round_to)
    out = next(n for n in reversed(graphs[0].graph.nodes) if n.op == "output")
    shapes = [tuple(n.meta["tensor_meta"].shape) for n in tree_leaves(out.args[0])
              if isinstance(n, fx.Node) and hasattr(n.meta.get("tensor_meta"), "shape")]
    return make_plan(coupling, removed, ratio, model=model), shapes


def _output_shapes(model: nn.Module, inputs: tuple[torch.Tensor, ...]) -> list[tuple[int, ...]]:
    with modes_kept(model), torch.no_grad():
        model.eval()
        return [tuple(t.shape) for t in tree_leaves(model(*inputs)) if isinstance(t, torch.Tensor)]


def slim(model: nn.Module, ratio: float, example_inputs: Any = None, *, ignore: Ignore = (),
         importance: Importance = "l2", round_to: int = 1, inplace: bool = False,
         leaf_modules: Leaves = ()) -> nn.Module:
    """Physically remove `ratio` of every prunable group's channels; same class, same output shape.

    Args:
        model: any fx-traceable module (torchvision CNNs work as they are).
        ratio: fraction of each coupled group's units removed, in [0, 1) (rounded down; each
            group keeps at least one unit).
        example_inputs: a tensor or tuple of tensors; inferred (1×C×224×224) for vision models.
        ignore: modules (or their qualified names) whose output channels are kept.
        importance: "l2" (default), "l1", "random" or callable(tensor, dim) -> per-index scores.
        round_to: keep every group's width a multiple of this (hardware-friendly widths).
        inplace: modify `model` itself instead of a deep copy (restored if anything fails).
        leaf_modules: module classes or names not to trace into (their channels are kept).

    Returns:
        The slim model; `surgeon.verify(model, slim)` checks mask-equivalence.

    Example:
        >>> slim = surgeon.slim(torchvision.models.resnet50(), 0.5)
    """
    inputs = _inputs(model, example_inputs)
    p, expected = _plan(model, ratio, inputs, ignore, importance, round_to, leaf_modules)
    target = model if inplace else clone(model)
    undo = Undo([], [])
    try:
        rebuild(target, p, undo=undo)
        got = _output_shapes(target, inputs)
        if got != expected:
            raise SurgeonError(f"output shapes changed from {expected} to {got}: please report this model")
    except Exception as e:
        undo()
        if isinstance(e, SurgeonError):
            raise
        raise SurgeonError(f"the slim {type(model).__name__} does not run ({e}); the model is unchanged") from e
    remember(target, p, inputs)
    return target


def analyze(model: nn.Module, example_inputs: Any = None, *, ignore: Ignore = (),
            leaf_modules: Leaves = (), ratio: float = 0.5, show: bool = True) -> Plan:
    """Print which groups can be pruned, which are frozen and why; return the plan at `ratio`.

    Example:
        >>> surgeon.analyze(torchvision.models.squeezenet1_0())
    """
    from .report import print_analysis

    p = plan(model, ratio, example_inputs, ignore=ignore, leaf_modules=leaf_modules)
    if show:
        print_analysis(model, p)
    return p

