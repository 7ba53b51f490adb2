"""What a removal costs: the parameters or multiply-accumulates (MACs) left once units leave,
estimated from the coupling and the traced shapes, without rebuilding or running the model.

A cost is a sum of *terms*, each a count scaling with the kept share of some weights:

- parameters: one term per parameter, its element count times the kept fraction of each of
  its cut dimensions — exact;
- MACs: one term per graph node that multiplies (for the example inputs): a conv or linear
  layer costs `output elements × weight[0].numel()` and scales with the kept share of its
  weight — exact, as its output's spatial extent never changes; an attention layer or any
  other leaf module with weights is counted by `FlopCounterMode` on fake tensors (cached per
  signature: the 32 blocks of vit_h_14 cost one run) and scales with the kept share of its
  weights (exact for heads: its projections and products all narrow with them); a matrix
  product scales with its weight operands, or with the weights of the module that made it.
"""
from __future__ import annotations

import operator
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import fx, nn
from torch._subclasses.fake_tensor import FakeTensorMode
from torch.utils._pytree import tree_map
from torch.utils.flop_counter import flop_registry

from ..util import attribute, flop_counter
from .groups import Coupling

__all__ = ["CostModel", "param_costs", "mac_costs"]

_PRODUCTS: set[object] = {
    torch.matmul, operator.matmul, torch.bmm, torch.mm, torch.baddbmm, torch.addmm, torch.einsum,
    F.linear, F.bilinear, F.conv1d, F.conv2d, F.conv3d, F.conv_transpose1d, F.conv_transpose2d,
    F.conv_transpose3d, F.scaled_dot_product_attention, "matmul", "bmm", "mm", "baddbmm", "addmm",
}
"""fx functions and methods that multiply (export graphs' ATen ops: those `FlopCounterMode`
knows)."""


@dataclass
class CostModel:
    """`metric` ("macs" / "params") of the whole model: `total`, and `estimate(removed)` for a
    boolean mask of removed units.

    Terms: `weight[t]` scales with the kept share of the parameters `param_of[k]` listed for
    term `term_of[k]` (`numel[k]` elements each); `fixed` is the part no cut touches."""

    metric: str
    total: int
    fixed: float
    weight: np.ndarray
    term_of: np.ndarray
    param_of: np.ndarray
    numel: np.ndarray
    dims: np.ndarray
    """Per parameter, the index into `spaces` of each dimension's space (-1: none)."""
    spaces: list[np.ndarray]
    """The units of each cut space that some parameter of a term has."""

    def __post_init__(self) -> None:
        sizes = np.array([s.size for s in self.spaces] + [1], dtype=np.float64)
        self._sizes = sizes
        self._flat = np.concatenate(self.spaces) if self.spaces else np.zeros(0, dtype=np.int64)
        self._starts = np.cumsum([0] + [s.size for s in self.spaces[:-1]]).astype(np.int64)
        self._norm = np.bincount(self.term_of, weights=self.numel, minlength=self.weight.size)

    def estimate(self, removed: np.ndarray) -> float:
        """The metric once the units in `removed` leave."""
        if not self.spaces:
            return float(self.total)
        gone = np.add.reduceat(removed[self._flat].astype(np.float64), self._starts)
        keep = np.append(1.0 - gone / self._sizes[:-1], 1.0)  # the last slot: dimension not cut
        kept = np.prod(keep[self.dims], axis=1)
        share = np.bincount(self.term_of, weights=self.numel * kept[self.param_of], minlength=self.weight.size)
        return self.fixed + float(self.weight @ (share / np.maximum(self._norm, 1)))


def _build(metric: str, coupling: Coupling, params: dict[str, torch.Tensor],
           terms: list[tuple[float, list[str]]]) -> CostModel:
    """A CostModel from (count, parameter names) terms; names missing from `params` are
    ignored, and a term without any parameter is fixed."""
    dg, index = coupling.dg, {name: i for i, name in enumerate(params)}
    space_ids: dict[int, int] = {}
    dims = np.full((len(params), max((t.dim() for t in params.values()), default=1) or 1), -1, dtype=np.int64)
    for p, (name, t) in enumerate(params.items()):
        for d in range(t.dim()):
            sp = dg.by_key.get((name, d))
            if sp is not None:
                dims[p, d] = space_ids.setdefault(sp, len(space_ids))
    spaces = [coupling.units_of(dg.spaces[sp]) for sp in space_ids]
    dims[dims < 0] = len(spaces)
    fixed, weight, term_of, param_of = 0.0, [], [], []
    for count, names in terms:
        found = [index[n] for n in dict.fromkeys(names) if n in index]
        if not found:
            fixed += count
            continue
        term_of += [len(weight)] * len(found)
        param_of += found
        weight.append(count)
    numel = np.array([params[n].numel() for n in params], dtype=np.float64)
    total = int(round(fixed + sum(weight)))
    return CostModel(metric, total, fixed, np.array(weight, dtype=np.float64), np.array(term_of, dtype=np.int64),
                     np.array(param_of, dtype=np.int64), numel[param_of] if param_of else np.zeros(0), dims, spaces)


def _params(model: nn.Module) -> dict[str, torch.Tensor]:
    return dict(model.named_parameters())


def param_costs(model: nn.Module, coupling: Coupling) -> CostModel:
    """Parameters left after a removal: exact.

    Example:
        >>> param_costs(model, coupling).estimate(removed)
    """
    params = _params(model)
    return _build("params", coupling, params, [(float(t.numel()), [n]) for n, t in params.items()])


def mac_costs(model: nn.Module, gm: fx.GraphModule, coupling: Coupling) -> CostModel:
    """MACs of one forward pass on the traced example inputs, after a removal.

    Example:
        >>> mac_costs(model, graphs[0], coupling).total  # == surgeon.util.count_macs(model, x)
    """
    params = _params(model)
    return _build("macs", coupling, params, list(_node_terms(model, gm, params)))


def _weights(module: nn.Module, prefix: str) -> list[str]:
    """Qualified names of the matrices (≥ 2 dims) of a module and its children."""
    return [f"{prefix}.{n}" if prefix else n for n, p in module.named_parameters() if p.dim() >= 2]


def _node_terms(model: nn.Module, gm: fx.GraphModule, params: dict[str, torch.Tensor]) -> Iterator[tuple[float, list[str]]]:
    """(MACs, the weights they scale with) of every node of `gm` that multiplies."""
    by_id = {id(t): n for n, t in params.items()}
    counted = _FakeCounter()
    for node in gm.graph.nodes:
        if node.op == "call_module":
            module = model.get_submodule(node.target)
            weights = _weights(module, node.target)
            if not weights:
                continue
            if type(module) in (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d):
                out = node.meta.get("tensor_meta")
                if hasattr(out, "shape"):
                    yield float(out.shape.numel() * module.weight[0].numel()), [f"{node.target}.weight"]
                continue
            shapes = tuple((n, tuple(t.shape)) for n, t in module.named_parameters())
            yield counted(module, node, (type(module), shapes)), weights
        elif node.op in ("call_function", "call_method") and _multiplies(node.target):
            macs = counted(_callable(node), node, node.target)
            if macs:
                yield macs, _operand_weights(model, node, by_id)


def _multiplies(target: object) -> bool:
    packet = getattr(target, "overloadpacket", None)
    return target in _PRODUCTS if packet is None else packet in flop_registry


def _callable(node: fx.Node) -> Callable:
    if node.op == "call_method":
        return lambda self, *args, **kwargs: getattr(self, node.target)(*args, **kwargs)
    return node.target


def _operand_weights(model: nn.Module, node: fx.Node, by_id: dict[int, str]) -> list[str]:
    """The parameters a product reads directly, else the weights of the module that made it."""
    direct = []
    for arg in node.all_input_nodes:
        if arg.op == "get_attr":
            value = attribute(model, arg.target)
            name = by_id.get(id(value))
            if name is not None and value.dim() >= 2:
                direct.append(name)
    if direct:
        return direct
    stack = node.meta.get("nn_module_stack") or {}
    path = list(stack.values())[-1][0].split("@")[0] if stack else ""
    try:
        return _weights(model.get_submodule(path), path)
    except AttributeError:
        return []



class _FakeCounter:
    """MACs of one call with fake inputs shaped as a node's (from `tensor_meta`), cached by
    signature; 0 when the inputs are not all known or the call fails on fake tensors."""

    def __init__(self) -> None:
        self.mode = FakeTensorMode(allow_non_fake_inputs=True)
        self.cache: dict[object, float] = {}

    def __call__(self, fn: Callable, node: fx.Node, key: object) -> float:
        try:
            args = tree_map(_meta, (node.args, node.kwargs))
        except _Unknown:
            return 0.0
        key = (key, repr(args), repr(node.meta.get("tensor_meta")))
        if key not in self.cache:
            self.cache[key] = self._run(fn, args)
        return self.cache[key]

    def _run(self, fn: Callable, args: tuple) -> float:
        counter = flop_counter()
        fastpath = torch.backends.mha.get_fastpath_enabled()
        torch.backends.mha.set_fastpath_enabled(False)  # the fused kernel is invisible to the counter
        try:
            with self.mode, counter, torch.no_grad():
                real = tree_map(lambda a: torch.empty(a.shape, dtype=a.dtype) if isinstance(a, _Shape) else a, args)
                fn(*real[0], **real[1])
        except Exception:  # noqa: BLE001 - an op fake tensors cannot run: its MACs stay unknown
            return 0.0
        finally:
            torch.backends.mha.set_fastpath_enabled(fastpath)
        return counter.get_total_flops() / 2


@dataclass(frozen=True)
class _Shape:
    shape: tuple[int, ...]
    dtype: torch.dtype


class _Unknown(Exception):
    """An input whose value tracing did not record (a size computed in `forward`)."""


def _meta(arg: object) -> object:
    if not isinstance(arg, fx.Node):
        return arg
    meta = arg.meta.get("tensor_meta")
    if not hasattr(meta, "shape"):
        raise _Unknown(arg.name)
    return _Shape(tuple(meta.shape), meta.dtype)
