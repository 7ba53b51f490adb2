"""Channel propagation: walk each traced graph once through the handlers, filling a DepGraph.

Every node's handler turns its inputs' labels into its output's labels, coupling atoms on the
way. Units holding an atom that reaches a model output, that the user ignored, or that flows
into an op no handler understands are frozen, with the reason kept.
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import torch
from torch import fx, nn

from ..config import Config
from ..errors import HandlerError, InputError
from ..ops import Ctx, Names, lookup
from ..ops.torch.shape import size_value
from ..util import attribute, warn
from .atoms import DepGraph
from .labels import LABELS, Labels, empty, is_labelled, iter_labels

__all__ = ["propagate"]


def _node_step(node: fx.Node, dg: DepGraph, env: dict, names: Names, options: Config) -> object:
    """Labels of one node's output, relating its inputs' atoms on the way."""
    meta = node.meta.get("tensor_meta")
    if node.op == "placeholder":
        return empty(meta)
    if node.op == "get_attr":
        value = attribute(names.model, node.target)
        name = names.of(value) if isinstance(value, torch.Tensor) else None
        if name is None:  # not a parameter or buffer (a tensor computed while tracing): fixed
            return empty(meta)
        return Labels(dg.space(name, d, s) if s > 1 else None for d, s in enumerate(value.shape))
    ctx = Ctx(node, dg, env, names, options)
    if node.op == "output":
        ctx.freeze(ctx.lab(node.args[0]), "reaches the model output")
        return None
    if meta is None:
        return size_value(ctx)
    handler = lookup(ctx.module if node.op == "call_module" else node.target)
    inputs = ctx.lab(list(node.args) + list(node.kwargs.values()))
    if handler is None:
        if is_labelled(inputs):
            ctx.freeze(inputs, "no handler for this op; its inputs' channels are kept")
        return empty(meta)
    first_new = dg.n_atoms
    try:
        out = handler(ctx)
    except InputError:
        raise
    except Exception as e:
        if not isinstance(e, HandlerError) and options.strict:
            raise HandlerError(
                f"handler {handler.__name__} failed on {ctx.where}, `{node.format_node()}`: "
                f"{type(e).__name__}: {e}. This is a surgeon bug; please report it. Pass "
                "strict=False to keep these channels and go on"
            ) from e
        if not isinstance(e, HandlerError):
            warn(f"handler {handler.__name__} failed on {ctx.where} ({e}); its channels are kept")
        ctx.freeze(inputs, f"handler {handler.__name__} cannot handle {node.format_node()} ({e}); "
                           "its channels are kept")
        dg.freeze(np.arange(first_new, dg.n_atoms), f"{ctx.where}: created by a failed handler")
        return empty(meta)
    return tuple(iter_labels(out)) if node.meta.get("flat_outputs") else out



def propagate(model: nn.Module, graphs: Sequence[fx.GraphModule], config: Config, *,
              keep: Mapping[str, str] | None = None) -> DepGraph:
    """Walk every graph once, filling a DepGraph with spaces, couplings and frozen atoms.

    `keep` maps module paths to a reason their output channels stay (besides `config.ignore`).
    """
    dg, names = DepGraph(), Names(model)
    for gm in graphs:
        env: dict[fx.Node, object] = {}
        for node in gm.graph.nodes:
            env[node] = node.meta[LABELS] = _node_step(node, dg, env, names, config)
    for item in config.ignore:
        label = item if isinstance(item, str) else type(item).__name__
        _freeze_module(model, dg, names, item, f"ignored by the user ({label})", outputs_only=True)
    for path, reason in (keep or {}).items():
        _freeze_module(model, dg, names, path, reason, outputs_only=False)
    return dg


def _freeze_module(model: nn.Module, dg: DepGraph, names: Names, item: nn.Module | str, reason: str, *,
                   outputs_only: bool) -> None:
    """Keep the channels the module's parameters create (and, unless `outputs_only`, every
    width they read: the module stays whole)."""
    mod = model.get_submodule(item) if isinstance(item, str) else item
    for t in [*mod.parameters(), *mod.buffers()]:
        name = names.of(t)
        for idx in (dg.by_key.get((name, d)) for d in range(t.dim())):
            if idx is not None and (idx in dg.active or not outputs_only):
                dg.freeze(dg.spaces[idx].atoms, reason)
