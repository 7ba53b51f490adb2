"""`Ctx`: what a handler sees of one fx node, and the verbs it uses to relate atoms."""
from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import fx, nn

from ..core.atoms import DepGraph
from ..core.labels import Labels, atoms_in, iter_labels
from ..errors import HandlerError

if TYPE_CHECKING:
    from ..config import Config

__all__ = ["Ctx", "Names", "op_name", "is_head_count"]


def is_head_count(name: str) -> bool:
    """An attribute name that counts heads (`num_heads`, `n_head`, `num_key_value_heads` …),
    not one that measures a head (`head_dim`, `attention_head_size`)."""
    return "head" in name and not name.startswith("_") and not any(w in name for w in ("dim", "size", "width"))


def op_name(target: Any) -> str:
    """The base name of a call: `"split"` for `torch.split`, `x.split` and `aten.split.Tensor`."""
    if isinstance(target, str):
        return target
    packet = getattr(target, "overloadpacket", None)
    return getattr(packet if packet is not None else target, "__name__", str(target))


class Names:
    """Canonical name of every parameter and buffer (tied tensors share one name), and every
    submodule by path."""

    def __init__(self, model: nn.Module) -> None:
        self.model = model
        self.modules = dict(model.named_modules())
        self._by_id: dict[int, str] = {}
        for name, t in [*model.named_parameters(), *model.named_buffers()]:
            self._by_id.setdefault(id(t), name)

    def of(self, tensor: torch.Tensor) -> str | None:
        return self._by_id.get(id(tensor))

    def module(self, path: str) -> nn.Module:
        """`model.get_submodule(path)`, looked up once per model."""
        found = self.modules.get(path)
        return found if found is not None else self.model.get_submodule(path)


class Ctx:
    """One fx node being propagated: its inputs' labels, shapes, module and the DepGraph."""

    def __init__(self, node: fx.Node, dg: DepGraph, env: dict[fx.Node, Any], names: Names,
                 options: Config) -> None:
        self.node, self.dg, self._env, self.names, self.options = node, dg, env, names, options
        self.module: nn.Module | None = (
            names.module(node.target) if node.op == "call_module" else None
        )
        target = node.target if isinstance(node.target, str) else getattr(node.target, "__name__", node.target)
        self.where = f"node '{node.name}' ({node.op} {target})"
        self.op_name = op_name(node.target)
        self.baked = bool(node.meta.get("baked"))
        """Literal sizes in this node may have been computed from tensors (torch.export bakes
        every size `forward` reads into the graph)."""

    # inputs ---------------------------------------------------------------------------------
    def lab(self, arg: Any) -> Any:
        """Labels of an argument (a node, or a list/tuple/dict of them); None for constants."""
        if isinstance(arg, fx.Node):
            return self._env.get(arg)
        if isinstance(arg, (list, tuple)):
            return tuple(self.lab(a) for a in arg)
        if isinstance(arg, dict):
            return {k: self.lab(v) for k, v in arg.items()}
        return None

    def arg(self, i: int, name: str | None = None, default: Any = None) -> Any:
        """Positional argument i, or keyword `name`, or `default`."""
        if i < len(self.node.args):
            return self.node.args[i]
        return self.node.kwargs.get(name, default) if name else default

    @staticmethod
    def shape(arg: Any) -> tuple[int, ...] | None:
        """Static shape of a tensor-valued argument (from shape propagation)."""
        meta = arg.meta.get("tensor_meta") if isinstance(arg, fx.Node) else None
        shape = getattr(meta, "shape", None)
        return tuple(shape) if shape is not None else None

    @property
    def out_shape(self) -> tuple[int, ...]:
        shape = self.shape(self.node)
        if shape is None:
            raise HandlerError(f"{self.where}: expected a tensor output")
        return shape

    @property
    def returns_tuple(self) -> bool:
        """The node returns several tensors (e.g. `max(x, dim)` → values, indices)."""
        return not hasattr(self.node.meta.get("tensor_meta"), "shape")

    def tensor_args(self) -> list[tuple[Labels, tuple[int, ...]]]:
        """(labels, shape) of every tensor among args and kwargs, in order."""
        out = []
        for arg in [*self.node.args, *self.node.kwargs.values()]:
            for a in arg if isinstance(arg, (list, tuple)) else [arg]:
                shape = self.shape(a)
                if shape is not None and isinstance(lab := self.lab(a), Labels):
                    out.append((lab, shape))
        return out

    # parameters -----------------------------------------------------------------------------
    def tensor(self, attr: str) -> torch.Tensor | None:
        """This module's parameter/buffer at a dotted path (`"weight"`, `"qkv.bias"`), or None."""
        obj: Any = self.module
        for part in attr.split("."):
            obj = getattr(obj, part, None)
        return obj if isinstance(obj, torch.Tensor) else None

    def param(self, attr: str, dim: int, *, active: bool = False) -> np.ndarray | None:
        """Atoms of dimension `dim` of this module's tensor `attr`; `active` creates a space."""
        t = self.tensor(attr)
        name = self.names.of(t) if t is not None else None
        if name is None or t.shape[dim] <= 1:
            return None
        return self.dg.space(name, dim % t.dim(), t.shape[dim], active=active)

    def bind(self, attr: str, dim: int, arr: np.ndarray | None) -> None:
        """Couple dimension `dim` of this module's tensor `attr` with the atoms in `arr`. An
        entry facing an unprunable index (−1, or `arr` None) is frozen: the module may be
        called again on a tensor whose index there could leave (one conv used twice)."""
        if (atoms := self.param(attr, dim)) is None:
            return
        if arr is None:
            self.dg.freeze(atoms, f"{self.where}: {attr} meets an unprunable input")
            return
        if atoms.size != arr.size:
            raise HandlerError(
                f"{self.where}: {attr} has {atoms.size} entries in dim {dim}, input has {arr.size}"
            )
        self.dg.union(atoms, arr)
        if (arr < 0).any():
            self.dg.freeze(atoms[arr < 0], f"{self.where}: {attr} meets an unprunable input")

    def track(self, attr: str, arr: np.ndarray | None, size: int, *, module: str | None = None) -> None:
        """Record that attribute `attr` of this node's module (or of `module`, a path) counts
        `size` indices labelled `arr`."""
        where = self.node.target if module is None else module
        self.dg.track(where, attr, arr if arr is not None else np.full(size, -1))

    def enclosing(self) -> tuple[str, nn.Module] | None:
        """(path, module) of the innermost module whose `forward` made this call, if known."""
        stack = self.node.meta.get("nn_module_stack") or {}
        path = list(stack.values())[-1][0].split("@")[0] if stack else ""  # export: "layer@1" = 2nd call
        try:
            return path, self.names.module(path)
        except AttributeError:
            return None

    def count_attr(self, value: int) -> tuple[str, str] | None:
        """(module path, name) of the one int attribute of the enclosing module equal to
        `value` — a width `forward` read from `self`, as in ViT's `reshape(n, self.hidden_dim,
        -1)`, which the rebuild can update — else None."""
        found = self.enclosing()
        if found is None:
            return None
        names = [k for k, v in vars(found[1]).items()
                 if not k.startswith("_") and type(v) is int and v == value]
        return (found[0], names[0]) if len(names) == 1 else None

    def head_count_attrs(self, value: int) -> list[tuple[str, str]]:
        """(module path, name) of the enclosing module's head-count attributes equal to
        `value` (`num_heads`, `num_attention_heads`, `n_head`, `num_key_value_heads` …; not
        head widths): they count the heads a head split computes with `-1`."""
        found = self.enclosing()
        if found is None:
            return []
        return [(found[0], k) for k, v in vars(found[1]).items()
                if type(v) is int and v == value and is_head_count(k)]

    # relations ------------------------------------------------------------------------------
    def merge(self, arrs: list[np.ndarray | None]) -> np.ndarray | None:
        """Couple index i of every array; an index labelled in one and not another is frozen."""
        present = [a for a in arrs if a is not None]
        if not present:
            return None
        out = present[0]
        for a in present[1:]:
            self.dg.union(out, a)
            lone = (out >= 0) != (a >= 0)
            if lone.any():
                self.freeze(np.where(out >= 0, out, a)[lone], "combined with an unprunable index")
            out = np.where(out >= 0, out, a)
        if len(present) < len(arrs):
            self.freeze(out, "combined with an unprunable tensor of the same size")
        return out

    def broadcast_merge(self, items: list[tuple[Labels, tuple[int, ...]]], out_shape: tuple[int, ...] | None = None) -> Labels:
        """Elementwise relation with broadcasting: aligned indices of all inputs are coupled."""
        shape = self.out_shape if out_shape is None else out_shape
        nd = len(shape)
        dims = []
        for d in range(nd):
            arrs = []
            for lab, shp in items:
                k = d - (nd - len(shp))
                if k >= 0 and shp[k] != 1 and shape[d] != 1:
                    arrs.append(lab[k])
            dims.append(self.merge(arrs))
        return Labels(dims)

    def freeze(self, value: Any, reason: str) -> None:
        """Pin every atom in an array or nested label value."""
        arr = value if isinstance(value, np.ndarray) else atoms_in(
            a for lab in iter_labels(value) for a in lab
        )
        self.dg.freeze(arr, f"{self.where}: {reason}")

    def inexact(self, arr: np.ndarray | None, reason: str) -> None:
        """Mark atoms whose removal is not exactly a zeroing (a statistic runs over them)."""
        self.dg.mark_inexact(arr, f"{self.where}: {reason}")
