"""Which layer feeds which: one forward pass that follows every tensor from the layers that made
it, through every op, to the layers that read it (any model that runs, any tracer or none)."""
from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import networkx as nx
import torch
from torch import nn
from torch.overrides import TorchFunctionMode
from torch.utils._pytree import tree_leaves
from torch.utils.weak import WeakTensorKeyDictionary

from ..util import as_inputs, eval_mode

__all__ = ["layer_flow", "INPUT", "OUTPUT"]

INPUT, OUTPUT = "(input)", "(output)"


def _tensors(value: Any) -> list[torch.Tensor]:
    return [t for t in tree_leaves(value) if isinstance(t, torch.Tensor)]


class _Follow(TorchFunctionMode):
    """Tags each op's outputs with the layers its inputs came from."""

    def __init__(self) -> None:
        super().__init__()
        self.sources = WeakTensorKeyDictionary()

    def came_from(self, value: Any) -> set[str]:
        return set().union(*(self.sources.get(t, ()) for t in _tensors(value)))

    def tag(self, value: Any, sources: Iterable[str]) -> None:
        sources = frozenset(sources)
        for t in _tensors(value):
            self.sources[t] = sources

    def __torch_function__(self, func, types, args=(), kwargs=None):  # noqa: ANN001
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        sources = self.came_from((args, kwargs))
        if sources:
            self.tag(out, sources | self.came_from(out))
        return out


def layer_flow(model: nn.Module, example_inputs: Any, layers: Iterable[str]) -> nx.DiGraph:
    """A graph over `layers` (module names) plus INPUT and OUTPUT, in call order: an edge where a
    layer's output reaches another layer's input through ops that are no layers of their own,
    and a `part=True` edge from a layer to a sublayer it never calls but reads the weights of
    (`nn.MultiheadAttention.out_proj`).

    Example:
        >>> flow = layer_flow(resnet18, x, ["conv1", "layer1.0.conv1", "fc"])
        >>> list(flow.successors("conv1"))
        ['layer1.0.conv1']
    """
    inputs = as_inputs(example_inputs)
    wanted = set(layers)
    graph = nx.DiGraph()
    graph.add_node(INPUT)
    follow = _Follow()
    handles = []

    def before(name: str):  # noqa: ANN202
        def hook(module: nn.Module, args: Any, kwargs: Any) -> None:
            graph.add_node(name)
            graph.add_edges_from((s, name) for s in follow.came_from((args, kwargs)))
        return hook

    def after(name: str):  # noqa: ANN202
        def hook(module: nn.Module, args: Any, kwargs: Any, out: Any) -> None:
            follow.tag(out, {name})
        return hook

    for name, module in model.named_modules():
        if name in wanted:
            handles.append(module.register_forward_pre_hook(before(name), with_kwargs=True))
            handles.append(module.register_forward_hook(after(name), with_kwargs=True))
    try:
        follow.tag((inputs.args, inputs.kwargs), {INPUT})
        with eval_mode(model), torch.no_grad(), follow:
            out = inputs(model)
        graph.add_edges_from((s, OUTPUT) for s in follow.came_from(out))
    finally:
        for handle in handles:
            handle.remove()
    for name in [n for n in wanted if n not in graph]:  # never called: its owner uses its weights
        owner = max((n for n in graph if name.startswith(n + ".")), key=len, default=None)
        graph.add_node(name)
        if owner is not None:
            graph.add_edge(owner, name, part=True)
    return graph
