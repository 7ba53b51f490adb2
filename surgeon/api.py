"""The structural verbs: `plan`, `slim`, `analyze` — each runs the core stages in order.

Options come as a `Config` or as keywords (the fields of `Config`); both are checked once.
"""
from __future__ import annotations

import inspect
from typing import Any

from torch import fx, nn
from torch.utils._pytree import tree_leaves

from .config import Config, make_config
from .core.groups import Coupling
from .core.plan import Plan, make_plan, select
from .core.propagate import propagate
from .core.rank import score_units
from .core.rebuild import INPUTS_ATTR, PLAN_ATTR, Undo, clone, rebuild
from .core.trace import trace
from .core.verify import output_shapes
from .errors import InputError, SurgeonError
from .report import print_analysis
from .util import Inputs, as_inputs, infer_inputs

__all__ = ["plan", "slim", "analyze"]


def _inputs(model: nn.Module, example_inputs: Any) -> Inputs:
    """The example inputs; a decoder taking `use_cache` gets `use_cache=False` (one graph
    without a KV cache; the slim model still runs with one)."""
    if not isinstance(model, nn.Module):
        raise InputError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    inputs = infer_inputs(model) if example_inputs is None else as_inputs(example_inputs)
    params = list(inspect.signature(model.forward).parameters)
    if "use_cache" in params and params.index("use_cache") >= len(inputs.args):
        inputs = inputs.with_defaults(use_cache=False)
    return inputs


def _plan(model: nn.Module, inputs: Inputs, config: Config) -> tuple[Plan, list[tuple[int, ...]]]:
    """The plan, and the eval-mode output shapes seen while tracing."""
    graphs = trace(model, inputs, leaf_modules=config.leaf_modules, frontend=config.frontend)
    coupling = Coupling(propagate(model, graphs, config))
    removed = select(coupling, score_units(model, coupling, config.importance), config.ratio,
                     round_to=config.round_to)
    out = next(n for n in reversed(graphs[0].graph.nodes) if n.op == "output")
    shapes = [tuple(n.meta["tensor_meta"].shape) for n in tree_leaves(out.args[0])
              if isinstance(n, fx.Node) and hasattr(n.meta.get("tensor_meta"), "shape")]
    return make_plan(coupling, removed, config.ratio, model=model), shapes


def plan(model: nn.Module, ratio: float | Config | None = None, example_inputs: Any = None,
         **options: Any) -> Plan:
    """Decide what `slim` would remove (same options), without touching the model.

    Example:
        >>> p = surgeon.plan(torchvision.models.resnet18(), 0.5)
        >>> slim = p.apply(model)
    """
    config = make_config(ratio, options)
    return _plan(model, _inputs(model, example_inputs), config)[0]


def slim(model: nn.Module, ratio: float | Config | None = None, example_inputs: Any = None, *,
         inplace: bool = False, **options: Any) -> nn.Module:
    """Physically remove `ratio` of every prunable group's channels; same class, same output shape.

    Args:
        model: any fx-traceable module (torchvision CNNs work as they are).
        ratio: fraction of each coupled group's units removed, in [0, 1) (rounded down; each
            group keeps at least one unit) — or a `surgeon.Config` holding it and the options.
        example_inputs: a tensor, a tuple of tensors, or a dict of keyword arguments; inferred
            (1×C×224×224) for vision models.
        inplace: modify `model` itself instead of a deep copy (restored if anything fails).
        **options: the fields of `surgeon.Config` — `ignore`, `importance` ("l2", "l1",
            "random" or a callable), `round_to`, `prune_heads`, `prune_head_dims`,
            `prune_embed`, `prune_kv_heads`, `leaf_modules`, `frontend`.

    Returns:
        The slim model; it carries its plan (`slim.surgeon_plan`), so
        `surgeon.verify(model, slim)` checks mask-equivalence.

    Example:
        >>> slim = surgeon.slim(torchvision.models.resnet50(), 0.5)
        >>> slim = surgeon.slim(model, surgeon.Config(0.5, round_to=8))
    """
    config = make_config(ratio, options)
    inputs = _inputs(model, example_inputs)
    p, expected = _plan(model, inputs, config)
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
    setattr(target, PLAN_ATTR, p)
    setattr(target, INPUTS_ATTR, inputs)
    return target


def analyze(model: nn.Module, example_inputs: Any = None, *, ratio: float | Config = 0.5,
            show: bool = True, **options: Any) -> Plan:
    """Print which groups can be pruned, which are frozen and why; return the plan at `ratio`.

    Takes the options of `plan` (a `Config` as `ratio`, or keywords).

    Example:
        >>> surgeon.analyze(torchvision.models.squeezenet1_0())
    """
    p = plan(model, ratio, example_inputs, **options)
    if show:
        print_analysis(model, p)
    return p

