"""DepGraph: index spaces, the atoms they hold, and the couplings between them.

Every prunable index (a conv's output channel, a column of a Linear, a BatchNorm entry…) is an
*atom*. Atoms are allocated in contiguous runs, one run per *space* (one dimension of one
parameter or buffer). Handlers relate atoms: `union` couples them (they must leave together),
`balance` makes rows of them lose equally many (equal chunks), `freeze` pins them (reason
kept), `inexact` marks them as feeding a statistic over channels. The coupled groups are built
from this in `groups.py`.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

__all__ = ["Space", "DepGraph", "connected_atoms", "distinct"]


@dataclass(frozen=True)
class Space:
    """One dimension of one tensor attribute (`name`, `dim`) owning atoms [start, start+size)."""

    name: str
    dim: int
    start: int
    size: int

    def __repr__(self) -> str:
        return f"{self.name}[{self.dim}]:{self.size}"

    @property
    def atoms(self) -> np.ndarray:
        """The atom ids of this space."""
        return np.arange(self.start, self.start + self.size, dtype=np.int64)


def distinct(values: np.ndarray) -> np.ndarray:
    """The sorted distinct values of an integer array: `np.unique` by one sort (numpy 2's
    hash-based `unique` takes about three times as long on the atom arrays here)."""
    values = np.sort(values, axis=None)
    return values[np.concatenate(([True], values[1:] != values[:-1]))] if values.size else values


def _present(atoms: np.ndarray | None) -> np.ndarray:
    """The atoms in an array (entries ≥ 0); empty for None."""
    if atoms is None:
        return np.zeros(0, dtype=np.int64)
    atoms = np.asarray(atoms)
    return atoms[atoms >= 0]


class DepGraph:
    """Atoms, spaces and their couplings, filled by the op handlers while walking the fx graph."""

    def __init__(self) -> None:
        self.spaces: list[Space] = []
        self.by_key: dict[tuple[str, int], int] = {}
        self.active: set[int] = set()
        self._starts: list[int] = []
        self._edges: list[tuple[np.ndarray, np.ndarray]] = []
        self.frozen: list[tuple[np.ndarray, str]] = []
        self.inexact: list[tuple[np.ndarray, str]] = []
        self.sizes: dict[tuple[str, str], np.ndarray] = {}
        self.counts: list[tuple[np.ndarray, np.ndarray]] = []
        self.balanced: list[np.ndarray] = []
        self.blocks: list[list[np.ndarray]] = []
        self.n_atoms = 0

    def space(self, name: str, dim: int, size: int, *, active: bool = False) -> np.ndarray:
        """Atoms of dimension `dim` of tensor attribute `name` (allocated on first use)."""
        idx = self.by_key.get((name, dim))
        if idx is None:
            idx = self.by_key[(name, dim)] = len(self.spaces)
            self.spaces.append(Space(name, dim, self.n_atoms, size))
            self._starts.append(self.n_atoms)
            self.n_atoms += size
        if active:
            self.active.add(idx)
        return self.spaces[idx].atoms

    def activate(self, atoms: np.ndarray | None) -> None:
        """Make the spaces holding `atoms` creators (their indices may be removed)."""
        if (atoms := _present(atoms)).size:
            self.active.update(np.unique(self.space_of(atoms)).tolist())

    def space_of(self, atoms: np.ndarray) -> np.ndarray:
        """Index into `spaces` of each atom."""
        return np.searchsorted(np.asarray(self._starts), atoms, side="right") - 1

    def union(self, a: np.ndarray, b: np.ndarray) -> None:
        """Couple atoms a[i] and b[i] (entries < 0 are ignored)."""
        self._edges.append((np.asarray(a, dtype=np.int64), np.asarray(b, dtype=np.int64)))

    def freeze(self, atoms: np.ndarray | None, reason: str) -> None:
        """Pin atoms (and whatever is coupled to them): they are never removed."""
        if (atoms := _present(atoms)).size:
            self.frozen.append((atoms, reason))

    def mark_inexact(self, atoms: np.ndarray | None, reason: str) -> None:
        """Mark atoms whose removal changes a statistic (LayerNorm over channels, softmax …)."""
        if (atoms := _present(atoms)).size:
            self.inexact.append((atoms, reason))

    def track(self, module: str, attr: str, labels: np.ndarray) -> None:
        """Remember that `module.attr` counts the indices in `labels` (for rebuild)."""
        old = self.sizes.get((module, attr))
        if old is not None and old.shape == labels.shape:
            self.union(old, labels)
            labels = np.where(old >= 0, old, labels)
        self.sizes[(module, attr)] = labels

    def same_count(self, a: np.ndarray, b: np.ndarray) -> None:
        """Two dimensions must keep equally many indices (one is sized from the other in
        `forward`). Satisfied when both hold the same units (a channel shuffle permutes them);
        otherwise `classes` couples them index by index."""
        if not np.array_equal(a, b):
            self.counts.append((a, b))

    def balance(self, rows: np.ndarray) -> None:
        """Each row of `rows` (atoms; the equal pieces of a `chunk`, the query heads of each
        key/value group) must keep equally many indices — not the same ones. A column with an
        unprunable index is frozen (it stays in every row)."""
        rows = np.asarray(rows, dtype=np.int64)
        lone = (rows < 0).any(0)
        if lone.any():
            self.freeze(rows[:, lone].ravel(), "equal counts cannot hold beside an unprunable index")
        if (~lone).sum() > 0:
            self.balanced.append(rows[:, ~lone])

    def classes(self) -> np.ndarray:
        """Class id (smallest coupled atom) of every atom, with count constraints enforced.

        Sets `blocks`: the balance constraints, each as rows of classes. A class split unevenly
        between rows is frozen; a constraint overlapping another without nesting in one of its
        rows couples its rows index by index instead, which always holds.
        """
        while True:
            a, b = self._coupled()
            root = connected_atoms(self.n_atoms, a, b)
            broken = [i for i, (x, y) in enumerate(self.counts)
                      if not np.array_equal(np.sort(root[x[x >= 0]]), np.sort(root[y[y >= 0]]))]
            fixed = np.zeros(self.n_atoms, dtype=bool)
            for atoms, _ in self.frozen:
                fixed[root[atoms]] = True
            self.blocks, unbalanced, odd = _blocks(root, self.balanced, fixed)
            self.freeze(odd, "equal chunks split this channel unevenly (or it counts differently): kept")
            if not broken and not unbalanced:
                return root
            for x, y in (self.counts[i] for i in broken):  # each constraint is enforced once
                if x.size != y.size:
                    self.freeze(np.concatenate([x, y]), "sized in forward from a dimension of another extent")
                    continue
                self.union(x, y)
                lone = (x >= 0) != (y >= 0)
                self.freeze(np.where(x >= 0, x, y)[lone], "sized in forward from a dimension that is not pruned")
            self.counts = [c for i, c in enumerate(self.counts) if i not in set(broken)]
            for rows in (self.balanced[i] for i in unbalanced):
                for row in rows[1:]:
                    self.union(rows[0], row)
            self.balanced = [r for i, r in enumerate(self.balanced) if i not in set(unbalanced)]

    def _coupled(self) -> tuple[np.ndarray, np.ndarray]:
        """Every `union` so far as two arrays of atoms, pairs with an unprunable side dropped."""
        if not self._edges:
            return np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.int64)
        a = np.concatenate([e[0].ravel() for e in self._edges])
        b = np.concatenate([e[1].ravel() for e in self._edges])
        keep = (a >= 0) & (b >= 0) & (a != b)
        return a[keep], b[keep]

    def active_atoms(self) -> np.ndarray:
        """Boolean mask: atom lies in a space created by a layer (conv/linear output …)."""
        mask = np.zeros(self.n_atoms, dtype=bool)
        for i in self.active:
            sp = self.spaces[i]
            mask[sp.start : sp.start + sp.size] = True
        return mask


def connected_atoms(n: int, a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Connected components of atoms 0..n-1 under edges (a, b): the smallest atom of each.

    Vectorised hook-and-jump union-find: each round hooks every edge's larger root under the
    smaller one, then compresses paths, until every edge joins equal roots.
    """
    parent = np.arange(n, dtype=np.int64)
    while a.size:
        pa, pb = parent[a], parent[b]
        if (pa == pb).all():
            break
        low = np.minimum(pa, pb)
        np.minimum.at(parent, pa, low)
        np.minimum.at(parent, pb, low)
        while True:
            nxt = parent[parent]
            if (nxt == parent).all():
                break
            parent = nxt
    return parent


def _rows_of_classes(classes: np.ndarray, fixed: np.ndarray) -> tuple[list[np.ndarray], np.ndarray]:
    """The classes a balance constraint restricts, per row, and the classes to freeze so that
    it can hold as a count. Classes with equally many entries in every row are left out
    (removing one keeps the rows equal), and so are frozen ones (`fixed`: they always stay).
    The rest must each lie in one row with one common multiplicity: a class a chunk boundary
    splits unevenly, or one of another multiplicity, is frozen."""
    n_rows = classes.shape[0]
    ids, inverse = np.unique(classes, return_inverse=True)
    mult = np.zeros((ids.size, n_rows), dtype=np.int64)
    np.add.at(mult, (inverse.reshape(classes.shape), np.arange(n_rows)[:, None]), 1)
    uneven = (mult != mult[:, :1]).any(1) & ~fixed[ids]
    one_row = (mult > 0).sum(1) == 1
    values, counts = np.unique(mult.max(1)[uneven & one_row], return_counts=True)
    usual = mult.max(1) == (values[np.argmax(values * counts)] if values.size else 0)
    kept = uneven & one_row & usual
    rows = [ids[kept & (mult[:, r] > 0)] for r in range(n_rows)] if kept.any() else []
    return rows, ids[uneven & ~kept]


def _blocks(root: np.ndarray, balanced: list[np.ndarray],
            fixed: np.ndarray) -> tuple[list[list[np.ndarray]], list[int], np.ndarray]:
    """The balance constraints as rows of classes; the indices of those that overlap a larger
    constraint without lying in one of its rows (constraints must nest, so that selection can
    solve them one inside another); and the classes to freeze (`_rows_of_classes`)."""
    found: list[tuple[int, list[np.ndarray]]] = []
    freeze = [np.zeros(0, dtype=np.int64)]
    for i, rows in enumerate(balanced):
        restricted, odd = _rows_of_classes(root[rows], fixed)
        freeze.append(odd)
        if restricted:
            found.append((i, restricted))
    owner: dict[int, tuple[int, int]] = {}
    seen: set[tuple[tuple[int, ...], ...]] = set()
    blocks: list[list[np.ndarray]] = []
    broken = []
    for i, rows in sorted(found, key=lambda f: -sum(r.size for r in f[1])):
        key = tuple(sorted(tuple(r.tolist()) for r in rows))
        if key in seen:  # the same pieces seen in another graph (train mode) or call
            continue
        if len({owner.get(c) for r in rows for c in r.tolist()}) > 1:
            broken.append(i)
            continue
        seen.add(key)
        for r, row in enumerate(rows):
            owner.update(dict.fromkeys(row.tolist(), (len(blocks), r)))
        blocks.append(rows)
    return blocks, broken, np.concatenate(freeze)
