"""Bias compensation (`compensate=True`): a removed unit is replaced by its calibration mean
instead of by zero.

At each consumer that reads a removed unit — a `nn.Linear` or a convolution, including an
attention layer's output projection — the unit's mean activation at that input (`Site.mean`)
times the consumer's weights reading it is a constant the layer's bias can absorb:
Δb = W[:, I] · μ_I (a conv's kernel summed over its taps; grouped convs per group). The plan
stores the removed indices and their means per consumer (`Shift`, `Shift.delta`); `rebuild` computes Δb from
the weights it slices (creating a bias where the layer has none), and `verify` holds the same
indices at the same means in the reference (`holding`), so the check is independent of Δb.

A bias is exact for a Linear and for a conv whose padding is not zeros (or is none). A
zero-padded conv sees the constant only inside the image, so its border outputs differ: such a
shift is kept (it lowers the error) but marked `approximate`, and `verify` applies it to the
reference as the slim model does instead of checking it.
"""
from __future__ import annotations

import dataclasses
from collections import Counter, defaultdict
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING

import numpy as np
import torch
from torch import fx, nn
from torch.ops import aten
from torch.utils._python_dispatch import TorchDispatchMode

from .labels import LABELS, Labels
from .plan import Plan, Shift

if TYPE_CHECKING:
    from .calibrate import Site, Stats
    from .groups import Coupling

__all__ = ["plan_shifts", "reference_plan", "holding"]

_PADDED = "zero padding: border outputs see only part of the mean"


def _uses(gm: fx.GraphModule) -> Counter:
    """How many graph nodes call each module, or read its weight."""
    uses: Counter = Counter()
    for n in gm.graph.nodes:
        if n.op == "call_module":
            uses[n.target] += 1
        elif n.op == "get_attr" and n.target.endswith(".weight"):
            uses[n.target.rpartition(".")[0]] += len(n.users)
    return uses


def _layer(model: nn.Module, nodes: dict[str, fx.Node], uses: Counter, site: Site) -> tuple[str, nn.Module, str] | str:
    """The Linear / conv reading `site` as its input features: (path, module, why approximate),
    or why there is none."""
    if ":" in site.node:  # inside a leaf layer: read at the matrix product by this weight
        leaf, _, weight = site.node.partition(":")
        path, ndim, caller = weight.rpartition(".")[0], 2, nodes[leaf].target
    else:
        node = nodes[site.node]
        owners = [a.target.rpartition(".")[0] for a in node.all_input_nodes
                  if a.op == "get_attr" and a.target.endswith(".weight")]
        if node.op != "call_module" and len(owners) != 1:
            return f"{node.format_node()} reads no single layer weight"
        path = caller = node.target if node.op == "call_module" else owners[0]
        ndim = next((len(lab) for a in node.all_input_nodes if isinstance(lab := a.meta.get(LABELS), Labels)
                     and site.dim < len(lab) and lab[site.dim] is not None
                     and np.array_equal(lab[site.dim], site.atoms)), None)
    m = model.get_submodule(path)
    conv = isinstance(m, nn.modules.conv._ConvNd)
    if not isinstance(m, nn.Linear) and not (conv and not m.transposed):
        return f"{type(m).__name__} '{path}' is not a Linear or a convolution"
    if uses[caller] != 1:
        return f"'{caller}' runs at {uses[caller]} places of the graph"
    if "bias" not in m._parameters:
        return f"'{path}' has no bias slot"
    width = m.weight.shape[1] * (m.groups if conv else 1)
    if ndim is None or site.dim != (1 if conv else ndim - 1) or width != site.atoms.size:
        return f"'{path}' does not read these channels as its input features"
    zero_padded = conv and m.padding_mode == "zeros" and any(m._reversed_padding_repeated_twice)
    return path, m, _PADDED if zero_padded else ""


def _kept_outputs(coupling: Coupling, weight: str, removed: np.ndarray, size: int) -> np.ndarray:
    """Which outputs of a layer stay."""
    idx = coupling.dg.by_key.get((weight, 0))
    return np.ones(size, dtype=bool) if idx is None else ~removed[coupling.units_of(coupling.dg.spaces[idx])]


def plan_shifts(model: nn.Module, gm: fx.GraphModule, coupling: Coupling, stats: Stats,
                removed: np.ndarray) -> tuple[tuple[Shift, ...], dict[str, str]]:
    """One `Shift` per consumer reading removed units of exact groups, and the consumers left
    uncompensated (path → why). A shift adding nothing to a kept output is left out."""
    exact = np.array([g.exact for g in coupling.groups] + [False])
    nodes = {n.name: n for n in gm.graph.nodes}
    uses, names = _uses(gm), {id(p): n for n, p in model.named_parameters()}
    found: dict[str, list] = defaultdict(list)
    skipped: dict[str, str] = {}
    for site in stats.sites:
        units = coupling.unit[np.maximum(site.atoms, 0)]
        gone = (site.atoms >= 0) & removed[units]
        if not gone.any():
            continue
        layer = _layer(model, nodes, uses, site)
        if isinstance(layer, str):
            skipped[site.node] = layer
        elif not exact[coupling.group_of[units[gone]]].all():
            skipped[layer[0]] = "reads units of an inexact group"
        else:
            found[layer[0]].append((site, np.flatnonzero(gone), units, *layer[1:]))
    shifts = []
    for path, hits in found.items():
        if len(hits) > 1:
            skipped[path] = f"reads removed units at {len(hits)} inputs"
            continue
        site, idx, units, m, approximate = hits[0]
        shift = Shift(path, names[id(m.weight)], tuple(idx.tolist()), tuple(site.mean[idx].tolist()),
                      tuple(coupling.group_of[units[idx]].tolist()), m.bias is None, approximate)
        delta = shift.delta(m)
        if delta[torch.from_numpy(_kept_outputs(coupling, shift.weight, removed, delta.numel()))].any():
            shifts.append(shift)
    return tuple(shifts), skipped


def reference_plan(plan: Plan) -> Plan:
    """`plan` without zeroing the input columns of layers whose inputs `holding` holds at their
    means (exact shifts), so the verification reference reads the means through its own weights."""
    held: dict[str, set[int]] = defaultdict(set)
    for s in plan.shifts:
        if not s.approximate:
            held[s.weight].update(s.index)
    cuts = []
    for c in plan.cuts:
        cols = {i % c.size for i in held.get(c.tensor, ())} if c.dim == 1 else set()
        if not cols:
            cuts.append(c)
            continue
        keep = [(i, g) for i, g in zip(c.remove, c.groups or (-1,) * len(c.remove)) if i not in cols]
        if keep:
            cuts.append(dataclasses.replace(c, remove=tuple(i for i, _ in keep),
                                            groups=tuple(g for _, g in keep) if c.groups else ()))
    return dataclasses.replace(plan, cuts=tuple(cuts))


class _Hold(TorchDispatchMode):
    """Replaces the held input indices of every matrix product (`F.linear`: `mm` / `addmm` on
    the transposed weight) and convolution by one of the held weights — found by storage, also
    inside leaf layers' functions (`F.multi_head_attention_forward`)."""

    def __init__(self, held: dict[int, tuple[tuple[int, ...], torch.Tensor, torch.Tensor]]) -> None:
        super().__init__()
        self.held = held

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if func in (aten.mm.default, aten.addmm.default):
            at, w = len(args) - 2, args[-1]
            shape = tuple(w.shape)[::-1]
        elif func in (aten.convolution.default, aten._convolution.default):
            at, w = 0, args[1]
            shape = tuple(w.shape)
        else:
            return func(*args, **(kwargs or {}))
        found = self.held.get(w.untyped_storage().data_ptr())
        if found is not None and found[0] == shape:
            _, idx, mean = found
            args = list(args)
            x = args[at].clone()
            x[:, idx] = mean.to(x.dtype).view(-1, *[1] * (x.dim() - 2))
            args[at] = x
        return func(*args, **(kwargs or {}))


@contextmanager
def holding(model: nn.Module, plan: Plan, *, released: frozenset[int] | set[int] = frozenset()) -> Iterator[None]:
    """While inside, `model` (the verification reference) sees every exactly compensated
    layer's removed inputs at their calibration means — except units of `released` groups,
    which pass as computed (probing)."""
    held = {}
    for s in plan.shifts:
        keep = [k for k, g in enumerate(s.groups or (-1,) * len(s.index)) if g not in released]
        if s.approximate or not keep:
            continue
        w = model.get_parameter(s.weight)
        held[w.untyped_storage().data_ptr()] = (tuple(w.shape), torch.tensor([s.index[k] for k in keep], device=w.device),
                                                torch.tensor([s.mean[k] for k in keep], device=w.device))
    if not held:  # nothing to hold: the reference runs as the original does (fast paths too)
        yield
        return
    fastpath = torch.backends.mha.get_fastpath_enabled()
    torch.backends.mha.set_fastpath_enabled(False)  # the fused kernel hides the output projection
    try:
        with _Hold(held):
            yield
    finally:
        torch.backends.mha.set_fastpath_enabled(fastpath)
