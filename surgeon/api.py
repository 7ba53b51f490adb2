"""The structural verbs: `plan`, `slim`, `analyze`."""
from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import fx, nn
from torch.utils._pytree import tree_leaves

from .errors import SurgeonError
from .groups import couple
from .importance import Importance, check_importance, score_units
from .ops import Options
from .plan import Plan, make_plan, select
from .rebuild import Undo, clone, rebuild
from .report import print_analysis
from .trace import as_inputs, infer_inputs, trace
from .verify import output_shapes, remember

__all__ = ["plan", "slim", "analyze", "Settings"]

Ignore = Sequence[nn.Module | str]
Leaves = Sequence[type | str]


@dataclass(frozen=True)
class Settings:
    """Everything `plan` / `slim` take besides the model and inputs, checked on creation."""

    ratio: float
    ignore: Ignore = ()
    importance: Importance = "l2"
    round_to: int = 1
    leaf_modules: Leaves = ()
    options: Options = field(default_factory=Options)

    def __post_init__(self) -> None:
        r = self.ratio
        if isinstance(r, bool) or not isinstance(r, (int, float)) or math.isnan(r) or not 0 <= r < 1:
            raise ValueError(f"ratio must be a number in [0, 1), got {r!r}")
        check_importance(self.importance)
        if isinstance(self.round_to, bool) or not isinstance(self.round_to, int) or self.round_to < 1:
            raise ValueError(f"round_to must be a positive integer, got {self.round_to!r}")


def _inputs(model: nn.Module, example_inputs: Any) -> tuple[torch.Tensor, ...]:
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    return infer_inputs(model) if example_inputs is None else as_inputs(example_inputs)


def _plan(model: nn.Module, inputs: tuple[torch.Tensor, ...], s: Settings) -> tuple[Plan, list[tuple[int, ...]]]:
    """The plan, and the eval-mode output shapes seen while tracing."""
    graphs = trace(model, inputs, leaf_modules=s.leaf_modules)
    coupling = couple(model, graphs, ignore=s.ignore, options=s.options)
    removed = select(coupling, score_units(model, coupling, s.importance), s.ratio, round_to=s.round_to)
    out = next(n for n in reversed(graphs[0].graph.nodes) if n.op == "output")
    shapes = [tuple(n.meta["tensor_meta"].shape) for n in tree_leaves(out.args[0])
              if isinstance(n, fx.Node) and hasattr(n.meta.get("tensor_meta"), "shape")]
    return make_plan(coupling, removed, s.ratio, model=model), shapes


def plan(model: nn.Module, ratio: float, example_inputs: Any = None, *, ignore: Ignore = (),
         importance: Importance = "l2", round_to: int = 1, prune_heads: bool = True,
         prune_head_dims: bool = False, prune_embed: bool = False, leaf_modules: Leaves = ()) -> Plan:
    """Decide what `slim` would remove (same options), without touching the model.

    Example:
        >>> p = surgeon.plan(torchvision.models.resnet18(), 0.5)
        >>> slim = p.apply(model)
    """
    s = Settings(ratio, ignore, importance, round_to, leaf_modules,
                 Options(prune_heads, prune_head_dims, prune_embed))
    return _plan(model, _inputs(model, example_inputs), s)[0]


def slim(model: nn.Module, ratio: float, example_inputs: Any = None, *, ignore: Ignore = (),
         importance: Importance = "l2", round_to: int = 1, prune_heads: bool = True,
         prune_head_dims: bool = False, prune_embed: bool = False, inplace: bool = False,
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
        prune_heads: attention layers lose whole heads (q, k, v rows and output columns).
        prune_head_dims: attention layers keep their head count and narrow every head instead.
        prune_embed: also prune a transformer's embedding dim (LayerNorm: not exact).
        inplace: modify `model` itself instead of a deep copy (restored if anything fails).
        leaf_modules: module classes or names not to trace into (their channels are kept).

    Returns:
        The slim model; `surgeon.verify(model, slim)` checks mask-equivalence.

    Example:
        >>> slim = surgeon.slim(torchvision.models.resnet50(), 0.5)
    """
    s = Settings(ratio, ignore, importance, round_to, leaf_modules,
                 Options(prune_heads, prune_head_dims, prune_embed))
    inputs = _inputs(model, example_inputs)
    p, expected = _plan(model, inputs, s)
    target = model if inplace else clone(model)
    undo = Undo([], [])
    try:
        rebuild(target, p, undo=undo)
        got = output_shapes(target, inputs)
        if got != expected:
            raise SurgeonError(f"output shapes changed from {expected} to {got}: please report this model")
    except Exception as e:
        undo()
        if isinstance(e, SurgeonError):
            raise
        raise SurgeonError(f"the slim {type(model).__name__} does not run ({e}); the model is unchanged") from e
    remember(target, p, inputs)
    return target


def analyze(model: nn.Module, example_inputs: Any = None, *, ratio: float = 0.5, show: bool = True,
            **options: Any) -> Plan:
    """Print which groups can be pruned, which are frozen and why; return the plan at `ratio`.

    Takes the keyword options of `plan`.

    Example:
        >>> surgeon.analyze(torchvision.models.squeezenet1_0())
    """
    p = plan(model, ratio, example_inputs, **options)
    if show:
        print_analysis(model, p)
    return p
