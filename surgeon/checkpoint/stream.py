"""Calibration statistics for a model whose weights stay on disk: the traced graph runs node by
node over every calibration batch at once, each weight read from the checkpoint just before its
first use and dropped after its last (as SliceGPT and Wanda push hidden states through one
decoder layer at a time), so memory holds the activations and the weights of one layer.

The statistics are those `core.calibrate` gathers in memory (the same sites, the same running
moments, bit for bit on the same batches). Under `torch.distributed`, each rank runs its share
of the batches and the moments of all ranks are merged, in rank order, on every rank.
"""
from __future__ import annotations

from collections.abc import Callable, Sequence
from functools import lru_cache
from typing import Any

import torch
from torch import fx, nn
from torch.fx.node import map_aggregate

from .. import distributed
from ..core.calibrate import Site, Stats, Values, batch_pieces, graph_inputs, leaf_outputs, plan_sites
from ..core.groups import Coupling
from ..errors import InputError
from ..util import Inputs

__all__ = ["stream_stats", "share"]


def share(batches: Any) -> list[Any]:
    """This rank's calibration batches: a sequence is dealt round-robin over the ranks; any
    other iterable is taken as this rank's share already (a loader with a distributed sampler)."""
    rank, size = distributed.rank_and_size()
    return list(batches[rank::size]) if isinstance(batches, Sequence) else list(batches)


def _last_uses(gm: fx.GraphModule) -> dict[fx.Node, list[fx.Node]]:
    """Per node, the values whose last reader it is (dropped once it has run)."""
    last: dict[fx.Node, fx.Node] = {}
    for node in gm.graph.nodes:
        for a in node.all_input_nodes:
            last[a] = node
    freed: dict[fx.Node, list[fx.Node]] = {}
    for value, user in last.items():
        freed.setdefault(user, []).append(value)
    return freed


def stream_stats(model: nn.Module, gm: fx.GraphModule, coupling: Coupling, batches: list[Inputs], example: Inputs,
                 read: Callable[[str], torch.Tensor], on_disk: set[str], buffers: dict[str, torch.Tensor], *,
                 advance: Callable[[], None] | None = None) -> Stats:
    """Statistics of `model` (on the meta device; tensor names in `on_disk` read with `read`, the
    other buffers' values in `buffers`) over this rank's `batches`, merged over all ranks."""
    sites, _, leaves, described = plan_sites(model, gm, coupling)
    if leaves:
        raise InputError(f"layers {sorted(leaves)[:3]} keep units inside one call (a leaf module): their "
                         "activations cannot be read node by node; calibrate this model in memory")
    baked = any(n.meta.get("baked") for n in gm.graph.nodes)
    pieces = [p for batch in batches for p in batch_pieces(batch, example, baked)]
    load = lambda name: read(name) if name in on_disk else _constant(buffers, gm, name)
    runners = [_Streamer(model, gm, graph_inputs(gm, piece)) for piece in pieces]
    freed = _last_uses(gm)
    with torch.no_grad():
        for node in gm.graph.nodes:
            if node.op in ("get_attr", "output") or not runners:
                continue
            for a in node.all_input_nodes:
                if a.op == "get_attr" and a not in runners[0].env:
                    value = load(a.target)
                    for r in runners:
                        r.env[a] = value
            loaded = {a.target: runners[0].env[a] for a in node.all_input_nodes if a.op == "get_attr"}
            if node.op == "call_module":
                module = model.get_submodule(node.target)
                tensors = {k: load(f"{node.target}.{k}") for k, _ in
                           [*module.named_parameters(), *module.named_buffers()]}
                loaded.update({f"{node.target}.{k}": t for k, t in tensors.items()})
                for r in runners:
                    r.tensors = tensors
            _out_norms(described, node.name, lambda name, t: loaded.get(name, t))
            for r in runners:
                for arg, dim, moments in sites.get(node.name, ()):
                    moments.add(r.env[arg], dim)
                r.env[node] = r.run_node(node)
            for r in runners:
                for value in freed.get(node, ()):
                    r.env.pop(value, None)
            if advance is not None:
                advance()
    cached = lru_cache(maxsize=1)(read)  # a rank without batches reads what the pass would have
    _out_norms(described, None, lambda name, t: cached(name) if name in on_disk else t)
    return _merged(coupling, described, len(batches))


def _out_norms(described: list, node: str | None, values: Values) -> None:
    """The consumer weight norms of `node`'s sites (of every site still pending, for None),
    computed from the weights the pass loaded for it: each weight is read once."""
    for i, (name, dim, atoms, moments, norm) in enumerate(described):
        if callable(norm) and node in (None, name):
            described[i] = (name, dim, atoms, moments, norm(values))


class _Streamer(fx.Interpreter):
    """Runs one calibration piece through the graph, a node at a time as the caller steps it;
    a layer kept whole (a `call_module` node) runs with the tensors read for it (`tensors`)."""

    def __init__(self, model: nn.Module, gm: fx.GraphModule, inputs: list[Any]) -> None:
        super().__init__(gm)
        self.model, self.env, self.args_iter = model, {}, iter(inputs)
        self.tensors: dict[str, torch.Tensor] = {}

    def call_function(self, target: Any, args: tuple, kwargs: dict) -> Any:
        """The graph was traced on `meta`: tensors it creates are made on the CPU instead."""
        cpu = lambda v: torch.device("cpu") if isinstance(v, torch.device) and v.type == "meta" else v
        return super().call_function(target, map_aggregate(args, cpu), map_aggregate(kwargs, cpu))

    def call_module(self, target: str, args: tuple, kwargs: dict) -> Any:
        return torch.func.functional_call(self.model.get_submodule(target), self.tensors, args, kwargs)

    def run_node(self, n: fx.Node) -> Any:
        return leaf_outputs(n, super().run_node(n))


def _constant(buffers: dict[str, torch.Tensor], gm: fx.GraphModule, target: str) -> torch.Tensor:
    """A tensor the graph reads that no checkpoint holds: a buffer the model computed when it
    was built (rotary frequencies) or a constant the tracer lifted."""
    if target in buffers:
        return buffers[target]
    value = fx.Interpreter(gm).fetch_attr(target)
    if value.is_meta:
        raise InputError(f"tensor '{target}' is neither in the checkpoint nor computed when the model is built")
    return value


def _merged(coupling: Coupling, described: list, batches: int) -> Stats:
    """The sites' moments merged over all ranks (rank order: every rank gets the same)."""
    mine = [(m.n, m.mean, m.m2) for *_, m, _ in described]
    everyone = distributed.all_gather_object((batches, mine))
    if len(everyone) > 1:
        for *_, m, _ in described:
            m.n, m.mean, m.m2 = 0, m.mean * 0, m.m2 * 0
        for _, theirs in everyone:
            for (*_, m, _), (n, mean, m2) in zip(described, theirs):
                m.merge(n, mean, m2)
    total = sum(b for b, _ in everyone)
    if not total:
        raise InputError("calibration holds no batches; pass an iterable of input batches")
    return Stats(coupling, total, tuple(Site(node, dim, atoms, m.n, m.mean, m.m2 / max(m.n, 1), norm)
                                        for node, dim, atoms, m, norm in described))
