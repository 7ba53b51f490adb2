"""Removal under equal-count constraints: the lowest total score, with every constrained row
losing equally many units.

A group's constraints (`groups.Coupling.blocks`: the equal pieces of a `chunk`, the query heads of
each key/value group) nest, so the cheapest removal of k units is solved bottom-up with one
cost curve per node (`cost[k]`: the least total score of k removed units, inf where k is
impossible): loose units give up their k lowest; a row adds the curves of its parts
(min-plus); a constraint of R rows removes k from every row, kR in all.
"""
from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from functools import reduce

import numpy as np

__all__ = ["remove_lowest"]


class _Loose:
    """Units free to leave in any number: the k lowest-scored first (ties: lower unit id)."""

    def __init__(self, units: np.ndarray, scores: np.ndarray) -> None:
        self.units = units[np.lexsort((units, scores[units]))]
        self.cost = np.concatenate([[0.0], np.cumsum(scores[self.units])])

    def pick(self, k: int) -> list[np.ndarray]:
        return [self.units[:k]]


class _Sum:
    """Two parts of one row: k removed units split between them as cheaply as possible."""

    def __init__(self, a: _Node, b: _Node) -> None:
        self.a, self.b = a, b
        self.cost = np.full(a.cost.size + b.cost.size - 1, np.inf)
        self.split = np.zeros(self.cost.size, dtype=np.int64)
        ks = np.arange(b.cost.size)
        for i, ca in enumerate(a.cost):
            c = ca + b.cost
            better = c < self.cost[i + ks]
            self.cost[i + ks[better]] = c[better]
            self.split[i + ks[better]] = i

    def pick(self, k: int) -> list[np.ndarray]:
        i = int(self.split[k])
        return self.a.pick(i) + self.b.pick(k - i)


class _Rows:
    """A constraint: every row loses the same number of units."""

    def __init__(self, rows: list[_Node]) -> None:
        self.rows = rows
        m = min(r.cost.size for r in rows)
        self.cost = np.full((m - 1) * len(rows) + 1, np.inf)
        self.cost[:: len(rows)] = sum(r.cost[:m] for r in rows)

    def pick(self, k: int) -> list[np.ndarray]:
        return [u for r in self.rows for u in r.pick(k // len(self.rows))]


_Node = _Loose | _Sum | _Rows


def _tree(units: np.ndarray, removable: np.ndarray, scores: np.ndarray,
          blocks: list[list[np.ndarray]]) -> _Node:
    """The group as nested nodes: each unit sits in the innermost row holding it."""
    order = sorted(range(len(blocks)), key=lambda b: -sum(r.size for r in blocks[b]))
    owner: dict[int, tuple[int, int]] = {}
    children: dict[tuple[int, int] | None, list[int]] = defaultdict(list)
    for b in order:  # larger first: a constraint's parent is the row holding its units
        children[owner.get(int(np.concatenate(blocks[b])[0]))].append(b)
        for r, row in enumerate(blocks[b]):
            owner.update(dict.fromkeys(row.tolist(), (b, r)))
    loose: dict[tuple[int, int] | None, list[int]] = defaultdict(list)
    for u in units[removable[units]].tolist():
        loose[owner.get(u)].append(u)

    def row(place: tuple[int, int] | None) -> _Node:
        parts = [_Loose(np.asarray(loose[place], dtype=np.int64), scores)]
        parts += [_Rows([row((b, r)) for r in range(len(blocks[b]))]) for b in children[place]]
        return reduce(_Sum, parts)

    return row(None)


def remove_lowest(units: np.ndarray, removable: np.ndarray, scores: np.ndarray,
                  blocks: list[list[np.ndarray]], count: int, *, step: int = 1,
                  spaces: Sequence[np.ndarray] = ()) -> np.ndarray:
    """Units of one group (`units`; `removable`, `scores`: per unit of the model) to remove
    under its constraints `blocks`: the cheapest `count`, or the most below it that they
    allow, preferring counts that keep a multiple of `step` units, never emptying one of
    `spaces` (units of a layer's outputs: a layer keeps an output).

    Example:
        >>> removed[remove_lowest(units, ~frozen, scores, coupling.blocks[g], 6)] = True
    """
    root = _tree(units, removable, scores, blocks)
    n = units.size
    counts = [k for k in range(min(count, n - 1, root.cost.size - 1), 0, -1) if np.isfinite(root.cost[k])]
    gone = np.zeros(removable.size, dtype=bool)
    for k in sorted(counts, key=lambda k: ((n - k) % step != 0, -k)):
        chosen = np.concatenate(root.pick(k))
        gone[chosen] = True
        if not any(gone[u].all() for u in spaces):
            return chosen
        gone[chosen] = False
    return np.zeros(0, dtype=np.int64)
