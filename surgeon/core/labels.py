"""Channel labels of a tensor: for each dimension, the atom behind each index (or -1, or None).

`Labels` is a tuple with one entry per tensor dimension: `None` when no index of that dimension
is prunable, else an int64 array of atoms (−1 where that index is not prunable). Batch and
spatial dimensions are normally `None`; a conv output carries its channel atoms in dimension 1.
"""
from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import Any, NamedTuple

import numpy as np

LABELS = "surgeon_labels"
"""`node.meta` key under which `propagate` leaves each node's output labels (read by calibration)."""

__all__ = ["LABELS", "Labels", "SizeOf", "empty", "atoms_in", "is_labelled", "iter_labels"]


class Labels(tuple):
    """Per-dimension atoms of one tensor."""

    def __repr__(self) -> str:
        dims = ", ".join("·" if a is None else f"{int((a >= 0).sum())}/{a.size}" for a in self)
        return f"Labels({dims})"

    def with_dim(self, dim: int, arr: np.ndarray | None) -> Labels:
        """A copy with dimension `dim` replaced."""
        out = list(self)
        out[dim] = arr
        return Labels(out)


class SizeOf(NamedTuple):
    """The size of one tensor dimension, read in `forward` (`x.shape[1]`, `x.size(1)`), with the
    labels of that dimension: a reshape to this size must carry the same indices."""

    labels: np.ndarray | None


def empty(value: Any) -> Any:
    """Unlabelled labels shaped like a shape-prop result (tensor metadata, tuple of them, …)."""
    shape = getattr(value, "shape", None)
    if shape is not None:
        return Labels([None] * len(shape))
    if isinstance(value, (tuple, list)):
        return tuple(empty(v) for v in value)
    if isinstance(value, dict):
        return {k: empty(v) for k, v in value.items()}
    return None


def iter_labels(value: Any) -> Iterator[Labels]:
    """Every `Labels` inside a nested label value."""
    if isinstance(value, Labels):
        yield value
    elif isinstance(value, (tuple, list)):
        for v in value:
            yield from iter_labels(v)
    elif isinstance(value, dict):
        for v in value.values():
            yield from iter_labels(v)


def atoms_in(values: Iterable[np.ndarray | None] | Labels) -> np.ndarray:
    """All atoms (≥ 0) present in a sequence of per-dimension arrays."""
    parts = [a[a >= 0] for a in values if a is not None]
    return np.concatenate(parts) if parts else np.zeros(0, dtype=np.int64)


def is_labelled(value: Any) -> bool:
    """True when any atom flows in a nested label value."""
    return any(atoms_in(lab).size for lab in iter_labels(value))
