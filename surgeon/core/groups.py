"""Units and groups: atoms coupled together form a unit (they leave as one); creating spaces
joined by a shared unit form a group, ranked and cut as one.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import networkx as nx
import numpy as np

from .atoms import DepGraph, Space, distinct

__all__ = ["Group", "Coupling"]


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


@dataclass
class Coupling:
    """Units (index classes) and groups of a propagated DepGraph.

    The dependency graph proper is a networkx graph over *creating* spaces (conv/linear outputs
    …): two are joined when a unit spans both (a residual add, a depthwise conv). Its connected
    components are the groups. Sharing a consumer does not join spaces (Inception's branches
    feed one concatenation but are ranked separately). `blocks[g]`: group g's equal-count
    constraints, each a list of rows of units that must lose equally many (nested: a smaller
    one lies inside one row of a larger one, or apart).
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
    blocks: dict[int, list[list[np.ndarray]]] = field(init=False)

    def __post_init__(self) -> None:
        dg = self.dg
        self.unit, self.n_units = _dense(dg.classes())
        self.active = np.zeros(self.n_units, dtype=bool)
        self.active[self.unit[dg.active_atoms()]] = True
        self.frozen = self._flag(dg.frozen)
        self.inexact = self._flag(dg.inexact)
        constraints = [[self.unit[row] for row in rows] for rows in dg.blocks]
        pairs = self._unit_spaces()
        self.graph = self._space_graph(pairs, constraints)
        components = sorted(nx.connected_components(self.graph), key=min)
        component = np.full(len(dg.spaces), -1, dtype=np.int64)
        for g, spaces in enumerate(components):
            component[list(spaces)] = g
        self.group_of = np.full(self.n_units, -1, dtype=np.int64)
        self.group_of[pairs[:, 0]] = component[pairs[:, 1]]  # a unit's spaces are all in one group
        order = np.argsort(self.group_of, kind="stable")
        sizes = np.bincount(self.group_of[self.group_of >= 0], minlength=len(components))
        self.members = np.split(order[order.size - int(sizes.sum()):], np.cumsum(sizes)[:-1]) if components else []
        self.blocks = {}
        for rows in constraints:  # each lies in one group: its spaces were joined
            g = int(self.group_of[np.concatenate(rows)].max())
            if g >= 0:
                self.blocks.setdefault(g, []).append(rows)
        frozen_why, inexact_why = self._reasons(dg.frozen), self._reasons(dg.inexact)
        self.groups = [
            Group(id=g, spaces=tuple(str(dg.spaces[i]) for i in sorted(spaces)), units=len(units),
                  frozen_units=int(self.frozen[units].sum()), exact=not bool(self.inexact[units].any()),
                  frozen_why=tuple(frozen_why[g][:8]), inexact_why=tuple(inexact_why[g][:8]))
            for g, (spaces, units) in enumerate(zip(components, self.members))
        ]

    def spaces_of(self, group: int) -> list[np.ndarray]:
        """The units of each creating space of a group (one array per layer output)."""
        found = [self.units_of(self.dg.spaces[i]) for i in sorted(self.dg.active)]
        return [u for u in found if u.size and self.group_of[u[0]] == group]

    def units_of(self, sp: Space) -> np.ndarray:
        """The unit of every index of a space."""
        return self.unit[sp.start : sp.start + sp.size]

    def _unit_spaces(self) -> np.ndarray:
        """Distinct (unit, creating space) pairs, sorted by unit."""
        active = sorted(self.dg.active)
        if not active:
            return np.zeros((0, 2), dtype=np.int64)
        n = len(self.dg.spaces)
        keys = distinct(np.concatenate([self.units_of(self.dg.spaces[i]) * n + i for i in active]))
        return np.stack([keys // n, keys % n], 1)

    def _space_graph(self, pairs: np.ndarray, constraints: list[list[np.ndarray]]) -> nx.Graph:
        """Creating spaces, joined where one unit has atoms in both, or where units of both
        are held to equal counts (`DepGraph.balance`)."""
        graph = nx.Graph()
        graph.add_nodes_from(sorted(self.dg.active))
        n = len(self.dg.spaces)
        same = pairs[1:, 0] == pairs[:-1, 0]
        edges = distinct(pairs[:-1, 1][same] * n + pairs[1:, 1][same])
        graph.add_edges_from(zip((edges // n).tolist(), (edges % n).tolist()))
        space_of = np.full(self.n_units, -1, dtype=np.int64)
        space_of[pairs[:, 0]] = pairs[:, 1]
        for rows in constraints:
            spaces = distinct(space_of[np.concatenate(rows)])
            spaces = spaces[spaces >= 0].tolist()
            graph.add_edges_from(zip(spaces[:-1], spaces[1:]))
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


def _dense(roots: np.ndarray) -> tuple[np.ndarray, int]:
    """Each atom's class numbered 0, 1, … in the order of the roots (what `np.unique(roots,
    return_inverse=True)` gives, without its sort: roots are atom ids), and the class count."""
    present = np.zeros(roots.size, dtype=bool)
    present[roots] = True
    rank = np.cumsum(present) - 1
    return rank[roots], int(present.sum())
