"""Calibration statistics: what a model's units do on real data, gathered once for the data-aware
importance criteria (`criteria.py`) and for bias compensation.

Activations are read where a unit is *consumed*: the input of every node whose output carries
atoms of a space its own parameters create and its activation inputs do not (a conv, a Linear,
an attention layer — not a BatchNorm, an add or a reshape). Each labelled dimension of such an
input is reduced over every other dimension: per index, the mean and the variance (`Site`).
Units inside a leaf layer that no graph tensor carries (attention heads before the output
projection, a squeeze-excitation block's squeeze channels) are read at the input of the
`F.linear` or convolution whose weight columns they own. One pass
per batch runs the traced graph (`fx.Interpreter`, the labels of `propagate` on every node);
a gradient criterion adds one forward + backward of the model itself on detached copies of
its parameters, so the model's parameters, `.grad`, `requires_grad`, buffers and modes are
never touched.
"""
from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from functools import partial
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
import torch.fx._pytree as fx_pytree
from torch import fx, nn
from torch.ops import aten
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves

from ..config import DATA_IMPORTANCES
from ..errors import InputError
from ..util import Inputs, attribute, eval_mode, warn
from .batches import LossFn, default_loss, split_batch
from .criteria import needs
from .groups import Coupling
from .labels import LABELS, Labels, atoms_in, iter_labels

if TYPE_CHECKING:
    from ..stages import Stages

__all__ = ["Site", "Stats", "Calibration", "calibrate", "LossFn", "Moments", "plan_sites", "batch_pieces", "graph_inputs",
           "Values", "own_values", "leaf_outputs"]


@dataclass(frozen=True)
class Site:
    """One consumer input: per index of one labelled dimension, the calibration mean and
    variance of the activation there, and the squared norm of the consumer's weights reading
    that index (`out_norm`; FLAP's outgoing weights)."""

    node: str
    dim: int
    atoms: np.ndarray
    count: int
    mean: np.ndarray
    var: np.ndarray
    out_norm: np.ndarray


@dataclass(frozen=True)
class Stats:
    """Calibration statistics, what a data criterion (`surgeon.Criterion`) receives.

    `sites`: every consumer input (mean / variance per index). `taylor`: per unit, Σ over
    batches of |Σ w·∂L/∂w| over the unit's slices (None unless gradients were asked for).
    `unit_sum(per_site)` adds a per-index quantity into one value per unit.

    Example:
        >>> act = stats.unit_sum(lambda s: s.var + s.mean ** 2)  # mean squared activation
    """

    coupling: Coupling
    batches: int
    sites: tuple[Site, ...]
    taylor: np.ndarray | None = None

    @property
    def n_units(self) -> int:
        return self.coupling.n_units

    def unit_sum(self, per_site: Callable[[Site], np.ndarray]) -> np.ndarray:
        """Σ over sites and indices of `per_site(site)[i]`, into the unit of each index."""
        out = np.zeros(self.n_units, dtype=np.float64)
        for s in self.sites:
            keep = s.atoms >= 0
            np.add.at(out, self.coupling.unit[s.atoms[keep]], np.asarray(per_site(s), dtype=np.float64)[keep])
        return out

    def seen(self) -> np.ndarray:
        """Units some site reads (others have no activation statistics)."""
        return self.unit_sum(lambda s: np.ones(s.atoms.size)) > 0

    def for_coupling(self, coupling: Coupling) -> Stats:
        """The same statistics for another coupling of the same graphs (a replan that keeps
        more channels): per-unit values move through their atoms."""
        taylor = self.taylor
        if taylor is not None and coupling is not self.coupling:
            taylor = np.zeros(coupling.n_units)
            pairs = np.unique(np.stack([self.coupling.unit, coupling.unit], 1), axis=0)
            np.add.at(taylor, pairs[:, 1], self.taylor[pairs[:, 0]])
        return Stats(coupling, self.batches, self.sites, taylor)


class Moments:
    """Running per-index mean and variance (Chan's parallel update, float64)."""

    def __init__(self, size: int) -> None:
        self.n, self.mean, self.m2 = 0, np.zeros(size), np.zeros(size)

    def add(self, x: torch.Tensor, dim: int) -> None:
        other = [d for d in range(x.dim()) if d != dim]
        n = x.numel() // x.shape[dim]
        if n == 0:
            return
        x = x.detach().float()
        var, mean = torch.var_mean(x, dim=other, correction=0) if other else (torch.zeros_like(x), x)
        self.merge(n, mean.double().cpu().numpy(), var.double().cpu().numpy() * n)

    def merge(self, n: int, mean: np.ndarray, m2: np.ndarray) -> None:
        """Add `n` more samples of this mean and sum of squared deviations."""
        if n == 0:
            return
        total = self.n + n
        delta = mean - self.mean
        self.mean = self.mean + delta * n / total
        self.m2 = self.m2 + m2 + delta ** 2 * self.n * n / total
        self.n = total


class _Watch(TorchDispatchMode):
    """Reads the input of every matrix product and convolution by one of `weights` (`F.linear`
    runs as `mm` / `addmm` on the transposed weight; a conv reads its input channels in dim 1):
    weights are keyed by their storage, with their shape. A dispatch mode sees the calls nested
    in a leaf's functions (`F.multi_head_attention_forward`, a squeeze-excitation block)."""

    def __init__(self, weights: dict[int, tuple[tuple[int, ...], Moments]]) -> None:
        super().__init__()
        self.weights = weights

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if func in (aten.mm.default, aten.addmm.default):
            x, w = args[-2:]
            shape, moments = self.weights.get(w.untyped_storage().data_ptr(), ((), None))
            if moments is not None and tuple(w.shape) == shape[::-1]:
                moments.add(x, x.dim() - 1)
        elif func is aten.convolution.default:
            x, w = args[:2]
            shape, moments = self.weights.get(w.untyped_storage().data_ptr(), ((), None))
            if moments is not None and tuple(w.shape) == shape:
                moments.add(x, 1)
        return func(*args, **(kwargs or {}))


def leaf_outputs(n: fx.Node, out: Any) -> Any:
    """What the graph reads of a node's result: a leaf call whose outputs were flattened when
    traced (`flat_outputs`) gives its tensors as a list."""
    if n.op == "call_module" and n.meta.get("flat_outputs"):
        return [t for t in tree_leaves(out) if isinstance(t, torch.Tensor)]
    return out


class _Runner(fx.Interpreter):
    """Runs a traced graph on the model's own modules and tensors, adding the labelled inputs
    of consumer nodes into their `Moments`."""

    def __init__(self, model: nn.Module, gm: fx.GraphModule, sites: dict[str, list[tuple[fx.Node, int, Moments]]],
                 watch: _Watch, leaves: set[str]) -> None:
        super().__init__(model, graph=gm.graph)
        self.gm, self.sites, self.watch, self.leaves = gm, sites, watch, leaves

    def fetch_attr(self, target: str) -> Any:
        try:
            return super().fetch_attr(target)
        except (AttributeError, RuntimeError):  # a constant the tracer made: fx's `torch.tensor(…)`
            return fx.Interpreter(self.gm).fetch_attr(target)  # in forward, torch.export's lifted tensors

    def run_node(self, n: fx.Node) -> Any:
        for arg, dim, moments in self.sites.get(n.name, ()):
            moments.add(self.env[arg], dim)
        if n.name in self.leaves:
            with self.watch:
                out = super().run_node(n)
        else:
            out = super().run_node(n)
        return leaf_outputs(n, out)


def _reads(model: nn.Module, node: fx.Node) -> dict[str, torch.Tensor]:
    """The parameters a node reads itself: its module's, or its `get_attr` arguments."""
    if node.op == "call_module":
        return {f"{node.target}.{k}": p for k, p in model.get_submodule(node.target).named_parameters()}
    found = {}
    for a in node.all_input_nodes:
        if a.op == "get_attr" and isinstance(t := attribute(model, a.target), nn.Parameter):
            found[a.target] = t
    return found



def _out_norm(coupling: Coupling, reads: dict[str, torch.Tensor], names: dict[int, str], atoms: np.ndarray,
              value: Values) -> np.ndarray:
    """Per index of a consumer input: the squared norm of the consumer's weight slices that
    read it — the slice aligned index by index where one is, else its unit's share."""
    dg, units = coupling.dg, coupling.unit[np.maximum(atoms, 0)]
    norm, spread = np.zeros(atoms.size), np.zeros(coupling.n_units)
    for t in reads.values():
        if t.dim() < 2 or (name := names.get(id(t))) is None:
            continue
        for k in range(t.dim()):
            if (idx := dg.by_key.get((name, k))) is None:
                continue
            sp = dg.spaces[idx]
            other = [d for d in range(t.dim()) if d != k]
            sq = torch.linalg.vector_norm(value(name, t).detach().float(), dim=other).square().double().cpu().numpy()
            mine = coupling.units_of(sp)
            if sp.size == atoms.size and np.array_equal(mine[atoms >= 0], units[atoms >= 0]):
                norm += sq
            else:
                np.add.at(spread, mine, sq)
    counts = np.bincount(units[atoms >= 0], minlength=coupling.n_units).clip(min=1)
    return np.where(norm > 0, norm, spread[units] / counts[units])


Values = Callable[[str, torch.Tensor], torch.Tensor]
"""`values(name, param)`: a parameter's values (the parameter itself, or read from disk for a
model on the meta device)."""


def own_values(name: str, t: torch.Tensor) -> torch.Tensor:
    return t


def _leaf_norm(name: str, t: torch.Tensor, value: Values) -> np.ndarray:
    """Per input feature of a Linear's or an ungrouped conv's weight, its squared norm."""
    w = value(name, t).detach().float()
    return w.square().sum([d for d in range(w.dim()) if d != 1]).double().cpu().numpy()


def _read_inside(model: nn.Module, name: str, t: torch.Tensor) -> bool:
    """A weight inside a leaf whose input features a site can read: a Linear's, or an
    ungrouped, untransposed conv's (one input channel per column of dim 1)."""
    if t.dim() == 2:
        return True
    owner = model.get_submodule(name.rpartition(".")[0])
    return isinstance(owner, nn.modules.conv._ConvNd) and not owner.transposed and owner.groups == 1


def plan_sites(model: nn.Module, gm: fx.GraphModule, coupling: Coupling) -> tuple[dict, dict, set, list]:
    """Where to read: graph sites (node name → [(input node, dim, moments)]), leaf-internal
    weights (parameter name → moments) and the leaf nodes calling them, and a description of
    each for `Site`: (node, dim, atoms, moments, out_norm), `out_norm(values)` computing the
    consumer's weight norms from the parameters the node reads. Only units of groups that may
    lose some are read."""
    dg, active = coupling.dg, coupling.dg.active_atoms()
    names = {id(t): n for n, t in model.named_parameters()}
    graph_sites: dict[str, list] = {}
    linear_sites: dict[str, Moments] = {}
    leaves: set[str] = set()
    described: list = []
    can_go = np.zeros(coupling.n_units + 1, dtype=bool)  # units of groups that may lose some; -1: none
    for group, units in zip(coupling.groups, coupling.members):
        can_go[units] = group.prunable > 0
    for node in gm.graph.nodes:
        out = atoms_in(a for lab in iter_labels(node.meta.get(LABELS)) for a in lab)
        inputs = [a for a in dict.fromkeys(node.all_input_nodes) if a.op != "get_attr"]
        seen = np.concatenate([atoms_in(a for lab in iter_labels(i.meta.get(LABELS)) for a in lab) for i in inputs] or [out[:0]])
        created = out[active[out]] if out.size else out
        creates = np.setdiff1d(created, seen).size > 0
        if not creates and node.op != "call_module":
            continue
        reads = _reads(model, node)
        for arg in inputs if creates else ():
            lab = arg.meta.get(LABELS)
            for dim, atoms in enumerate(lab if isinstance(lab, Labels) else ()):
                if atoms is not None and can_go[np.where(atoms >= 0, coupling.unit[np.maximum(atoms, 0)], -1)].any():
                    moments = Moments(atoms.size)
                    graph_sites.setdefault(node.name, []).append((arg, dim, moments))
                    described.append((node.name, dim, atoms, moments, partial(_out_norm, coupling, reads, names, atoms)))
        if node.op != "call_module":
            continue
        read_here = set(coupling.unit[seen].tolist()) if creates else set()  # by the graph sites above
        for name, t in reads.items():
            idx = dg.by_key.get((names.get(id(t)), 1))
            if idx is not None and _read_inside(model, names[id(t)], t) and not read_here & set(coupling.units_of(dg.spaces[idx]).tolist()) \
                    and can_go[coupling.units_of(dg.spaces[idx])].any():
                atoms = dg.spaces[idx].atoms
                leaves.add(node.name)
                linear_sites[names[id(t)]] = moments = Moments(atoms.size)
                described.append((f"{node.name}:{name}", 1, atoms, moments, partial(_leaf_norm, names[id(t)], t)))
    return graph_sites, linear_sites, leaves, described


def graph_inputs(gm: fx.GraphModule, inputs: Inputs) -> list[Any]:
    """The placeholder values of a traced graph for these inputs."""
    info = getattr(gm.graph._codegen, "pytree_info", None)
    if info is not None and info.in_spec is not None:
        return list(fx_pytree.tree_flatten_spec((inputs.args, inputs.kwargs), info.in_spec))
    rest = [n for n in gm.graph.nodes if n.op == "placeholder"][len(inputs.args):]
    return [*inputs.args, *(inputs.kwargs.get(n.target, n.args[0] if n.args else None) for n in rest)]


def batch_pieces(inputs: Inputs, example: Inputs, baked: bool) -> list[Inputs]:
    """A torch.export graph has the example's batch size baked in: run a batch in pieces."""
    if not baked:
        return [inputs]
    n = example.tensors()[0].shape[0]
    got = inputs.tensors()[0].shape[0]
    if got % n:
        raise InputError(f"this model was traced by torch.export with batch size {n} ({example.describe()}): "
                         f"calibration batches must hold a multiple of {n} samples, got {got}")
    return [inputs.map(lambda t, i=i: t[i:i + n] if t.dim() and t.shape[0] == got else t) for i in range(0, got, n)]


def _taylor(model: nn.Module, coupling: Coupling, inputs: Inputs, targets: Any, loss_fn: LossFn, acc: np.ndarray) -> None:
    """Add |Σ w·∂L/∂w| over each unit's slices for one batch, on detached parameter copies."""
    params = {n: p.detach().requires_grad_(True) for n, p in model.named_parameters()}
    with torch.enable_grad():
        out = torch.func.functional_call(model, params, inputs.args, inputs.kwargs)
        loss = loss_fn(out, targets)
        if not isinstance(loss, torch.Tensor) or loss.numel() != 1 or not loss.requires_grad:
            raise InputError("loss_fn must return a scalar tensor that depends on the model's parameters")
        grads = torch.autograd.grad(loss, list(params.values()), allow_unused=True)
    by_name = dict(zip(params, grads))
    batch = np.zeros(coupling.n_units)
    for sp in coupling.dg.spaces:
        g = by_name.get(sp.name)
        if g is None:
            continue
        prod = params[sp.name].detach().float() * g.float()
        other = [d for d in range(prod.dim()) if d != sp.dim]
        np.add.at(batch, coupling.units_of(sp), (prod.sum(dim=other) if other else prod).double().cpu().numpy())
    acc += np.abs(batch)


def calibrate(model: nn.Module, gm: fx.GraphModule, coupling: Coupling, calibration: Iterable[Any], example: Inputs, *,
              activations: bool = True, gradients: bool = False, loss_fn: LossFn | None = None,
              stages: Stages | None = None) -> Stats:
    """Statistics of `model` over the calibration batches (see the module docstring)."""
    graph_sites, linear_sites, leaves, described = plan_sites(model, gm, coupling) if activations else ({}, {}, set(), [])
    baked = any(n.meta.get("baked") for n in gm.graph.nodes)
    taylor = np.zeros(coupling.n_units) if gradients else None
    params = dict(model.named_parameters())
    batches = 0
    fastpath = torch.backends.mha.get_fastpath_enabled()
    torch.backends.mha.set_fastpath_enabled(False)  # the fused kernel hides the output projection
    try:
        with eval_mode(model):
            for batch in calibration:
                inputs, targets = split_batch(batch, example)
                if activations:
                    watch = {params[n].untyped_storage().data_ptr(): (tuple(params[n].shape), m)
                             for n, m in linear_sites.items()}
                    with torch.no_grad():
                        for piece in batch_pieces(inputs, example, baked):
                            _Runner(model, gm, graph_sites, _Watch(watch), leaves).run(
                                *graph_inputs(gm, piece), enable_io_processing=False)
                if gradients:
                    _taylor(model, coupling, inputs, targets, loss_fn or default_loss, taylor)
                batches += 1
                if stages is not None:
                    stages.advance("calibrate")
    finally:
        torch.backends.mha.set_fastpath_enabled(fastpath)
    if not batches:
        raise InputError("calibration holds no batches; pass an iterable of input batches")
    sites = tuple(Site(node, dim, atoms, m.n, m.mean, m.m2 / max(m.n, 1), norm(own_values))
                  for node, dim, atoms, m, norm in described)
    return Stats(coupling, batches, sites, taylor)


@dataclass
class Calibration:
    """The verbs' `calibration=` / `loss_fn=`: checked against the importance up front, the
    statistics gathered once on first use (a replan reuses them)."""

    batches: Iterable[Any] | None
    loss_fn: LossFn | None
    example: Inputs
    activations: bool = False
    gradients: bool = False
    stats: Stats | None = None

    @classmethod
    def of(cls, importance: Any, batches: Iterable[Any] | None, loss_fn: LossFn | None, example: Inputs, *,
           compensate: bool = False) -> Calibration:
        """Checked: a data criterion and bias compensation have batches (compensation reads
        the activations' means whatever the importance); `loss_fn` is callable (and warned
        about where no gradient criterion reads it); unused batches are warned about."""
        if batches is not None and (not isinstance(batches, Iterable) or isinstance(batches, (torch.Tensor, dict))):
            raise InputError("calibration must be an iterable of batches (a list, a DataLoader), "
                             f"not a single {type(batches).__name__}; wrap one batch as [batch]")
        reads = needs(importance)
        if reads is not None and batches is None:
            raise InputError(f"importance={importance!r} ranks units on data: pass calibration=batches "
                             "(an iterable of input batches like example_inputs, or of (inputs, targets) pairs)")
        if compensate and batches is None:
            raise InputError("compensate=True moves each removed unit's calibration mean into its consumers' "
                             "biases: pass calibration=batches (an iterable of input batches like example_inputs)")
        if loss_fn is not None and not callable(loss_fn):
            raise InputError(f"loss_fn must be a callable(output, targets) -> scalar loss, got {loss_fn!r}")
        if reads is None and batches is not None and not compensate:
            warn(f"calibration data is read only by data criteria ({', '.join(DATA_IMPORTANCES)} or a "
                 f"Criterion) and compensate=True; importance={importance!r} ignores it")
        elif loss_fn is not None and not (reads and reads[1]):
            warn(f"loss_fn is read only by gradient criteria ('taylor', Criterion(gradients=True)); "
                 f"importance={importance!r} ignores it")
        activations, gradients = reads or (False, False)
        return cls(batches, loss_fn, example, activations or compensate, gradients)

    def gather(self, model: nn.Module, gm: fx.GraphModule, coupling: Coupling, stages: Stages) -> Stats | None:
        """The statistics (None when the importance reads none)."""
        if self.stats is None and (self.activations or self.gradients):
            total = len(self.batches) if hasattr(self.batches, "__len__") else None
            with stages.stage("calibrate", total=total):
                self.stats = calibrate(model, gm, coupling, self.batches, self.example, activations=self.activations,
                                       gradients=self.gradients, loss_fn=self.loss_fn, stages=stages)
        return self.stats
