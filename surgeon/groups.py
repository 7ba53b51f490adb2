"""Channel propagation over the fx graph, then coupled groups of removable units.

Walking each graph in order, every node's handler turns its inputs' labels into its output's
labels, coupling atoms in the DepGraph. Afterwards, atoms that were coupled form one *unit* (they
leave together); units whose spaces are connected form a *group*, which is ranked and cut as
one. Units holding an atom that reaches a model output, that the user ignored, or that flows into
an op no handler understands are frozen, with the reason kept.
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import networkx as nx
import numpy as np
import torch
from torch import fx, nn

from .errors import HandlerError
from .graph import DepGraph, Space
from .labels import Labels, empty, is_labelled
from .ops import Ctx, Names, Options, lookup
from .ops.shape import size_value

__all__ = ["Group", "Coupling", "propagate", "couple"]


@dataclass(frozen=True)
class Group:
    """Coupled index spaces that lose the same units. `units` counts removable index classes."""

    id: int
    spaces: tuple[str, ...]
    units: int
    frozen_units: int
    exact: bool
    frozen_why: tuple[str, ...] = ()
    inexact_why: tuple[str, ...] = ()

    @property
    def prunable(self) -> int:
        """Units that may leave (a group keeps at least one)."""
        return min(self.units - self.frozen_units, self.units - 1)

    def __repr__(self) -> str:
        head = self.spaces[0] if self.spaces else "?"
        more = f" +{len(self.spaces) - 1}" if len(self.spaces) > 1 else ""
        flag = "" if self.exact else ", inexact"
        return f"Group({self.id}: {head}{more}, units={self.units}, frozen={self.frozen_units}{flag})"


def _node_step(node: fx.Node, dg: DepGraph, env: dict, names: Names, options: Options) -> object:
    """Labels of one node's output, relating its inputs' atoms on the way."""
    meta = node.meta.get("tensor_meta")
    if node.op == "placeholder":
        return empty(meta)
    if node.op == "get_attr":
        value = _attr(names.model, node.target)
        if not isinstance(value, torch.Tensor):
            return None
        name = names.of(value) or node.target
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
        return handler(ctx)
    except (HandlerError, IndexError, KeyError, ValueError, TypeError, AttributeError) as e:
        ctx.freeze(inputs, f"handler {handler.__name__} cannot handle {node.format_node()} ({e}); "
                           "its channels are kept")
        dg.freeze(np.arange(first_new, dg.n_atoms), f"{ctx.where}: created by a failed handler")
        return empty(meta)


def _attr(model: nn.Module, target: str) -> object:
    mod, _, name = target.rpartition(".")
    return getattr(model.get_submodule(mod) if mod else model, name)


def propagate(model: nn.Module, graphs: Sequence[fx.GraphModule], *,
              ignore: Sequence[nn.Module | str] = (), options: Options = Options()) -> DepGraph:
    """Walk every graph once, filling a DepGraph with spaces, couplings and frozen atoms."""
    dg, names = DepGraph(), Names(model)
    for gm in graphs:
        env: dict[fx.Node, object] = {}
        for node in gm.graph.nodes:
            env[node] = _node_step(node, dg, env, names, options)
    _freeze_ignored(model, dg, names, ignore)
    return dg


def _freeze_ignored(model: nn.Module, dg: DepGraph, names: Names, ignore: Sequence[nn.Module | str]) -> None:
    for item in ignore:
        mod = model.get_submodule(item) if isinstance(item, str) else item
        label = item if isinstance(item, str) else type(item).__name__
        for t in [*mod.parameters(), *mod.buffers()]:
            name = names.of(t)
            for idx in (dg.by_key.get((name, d)) for d in range(t.dim())):
                if idx is not None and idx in dg.active:
                    dg.freeze(dg.spaces[idx].atoms, f"ignored by the user ({label})")


@dataclass
class Coupling:
    """Units (index classes) and groups of a propagated DepGraph.

    The dependency graph proper is a networkx graph over *creating* spaces (conv/linear outputs
    …): two are joined when a unit spans both (a residual add, a depthwise conv). Its connected
    components are the groups. Sharing a consumer does not join spaces (Inception's branches
    feed one concatenation but are ranked separately).
    """

    dg: DepGraph
    unit: np.ndarray = field(init=False)
    n_units: int = field(init=False)
    group_of: np.ndarray = field(init=False)
    active: np.ndarray = field(init=False)
    frozen: np.ndarray = field(init=False)
    inexact: np.ndarray = field(init=False)
    graph: nx.Graph = field(init=False)
    groups: list[Group] = field(init=False)
    members: list[np.ndarray] = field(init=False)

    def __post_init__(self) -> None:
        dg = self.dg
        _, self.unit = np.unique(dg.classes(), return_inverse=True)
        self.n_units = int(self.unit.max()) + 1 if self.unit.size else 0
        self.active = np.zeros(self.n_units, dtype=bool)
        self.active[self.unit[dg.active_atoms()]] = True
        self.frozen = self._flag(dg.frozen)
        self.inexact = self._flag(dg.inexact)
        self.graph = self._space_graph()
        self.group_of = np.full(self.n_units, -1, dtype=np.int64)
        components = sorted(nx.connected_components(self.graph), key=min)
        self.members = []
        for spaces in components:
            units = np.unique(np.concatenate([self.units_of(self.dg.spaces[i]) for i in spaces]))
            self.group_of[units] = len(self.members)
            self.members.append(units)
        frozen_why, inexact_why = self._reasons(dg.frozen), self._reasons(dg.inexact)
        self.groups = [
            Group(id=g, spaces=tuple(str(dg.spaces[i]) for i in sorted(spaces)), units=len(units),
                  frozen_units=int(self.frozen[units].sum()), exact=not bool(self.inexact[units].any()),
                  frozen_why=tuple(frozen_why[g][:8]), inexact_why=tuple(inexact_why[g][:8]))
            for g, (spaces, units) in enumerate(zip(components, self.members))
        ]

    def units_of(self, sp: Space) -> np.ndarray:
        """The unit of every index of a space."""
        return self.unit[sp.start : sp.start + sp.size]

    def _space_graph(self) -> nx.Graph:
        """Creating spaces, joined where one unit has atoms in both."""
        graph = nx.Graph()
        graph.add_nodes_from(sorted(self.dg.active))
        pairs = np.concatenate([
            np.stack([self.units_of(self.dg.spaces[i]), np.full(self.dg.spaces[i].size, i)], 1)
            for i in sorted(self.dg.active)
        ]) if self.dg.active else np.zeros((0, 2), dtype=np.int64)
        pairs = np.unique(pairs, axis=0)
        same = pairs[1:, 0] == pairs[:-1, 0]
        graph.add_edges_from(zip(pairs[:-1, 1][same].tolist(), pairs[1:, 1][same].tolist()))
        return graph

    def _flag(self, marks: list[tuple[np.ndarray, str]]) -> np.ndarray:
        """Units holding a marked atom."""
        flag = np.zeros(self.n_units, dtype=bool)
        for atoms, _ in marks:
            flag[self.unit[atoms]] = True
        return flag

    def _reasons(self, marks: list[tuple[np.ndarray, str]]) -> list[list[str]]:
        """Distinct reasons touching each group, in the order they were given."""
        reasons: list[list[str]] = [[] for _ in self.members]
        for atoms, reason in marks:
            for g in np.unique(self.group_of[self.unit[atoms]]).tolist():
                if g >= 0 and reason not in reasons[g]:
                    reasons[g].append(reason)
        return reasons


def couple(model: nn.Module, graphs: Sequence[fx.GraphModule], *,
           ignore: Sequence[nn.Module | str] = (), options: Options = Options()) -> Coupling:
    """Propagate channels through `graphs` and return the units and groups."""
    return Coupling(propagate(model, graphs, ignore=ignore, options=options))

