"""The layers a dependency-graph picture draws: every module owning a creating space of the plan,
with its groups and widths; repeated blocks collapsed and a scope cut out for large models."""
from __future__ import annotations

import re
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import networkx as nx

if TYPE_CHECKING:
    from ..core.plan import Plan

__all__ = ["Layer", "plan_layers", "collapse", "cut_scope"]

_SPACE = re.compile(r"^(?P<tensor>.*)\[(?P<dim>\d+)\]:(?P<size>\d+)$")
_INDEX = re.compile(r"^(?P<stem>.*?)(?P<index>\d+)$")


@dataclass
class Layer:
    """One drawn node: a module (or a run of collapsed blocks), its widths and groups."""

    name: str
    kind: str
    widths: list[str] = field(default_factory=list)
    groups: list[int] = field(default_factory=list)
    blocks: int = 0
    """For a collapsed run: how many blocks it stands for."""


def plan_layers(plan: Plan, types: dict[str, str]) -> dict[str, Layer]:
    """Module name → Layer for every creating space of `plan` (`types`: module name → class).

    Example:
        >>> plan_layers(surgeon.plan(resnet18, 0.5), types)["conv1"].widths
        ['64 → 32']
    """
    cuts = {(c.tensor, c.dim): len(c.remove) for c in plan.cuts}
    layers: dict[str, Layer] = {}
    for group in plan.groups:
        for space in group.spaces:
            found = _SPACE.match(space)
            if found is None:
                continue
            tensor, dim, size = found["tensor"], int(found["dim"]), int(found["size"])
            module, _, attr = tensor.rpartition(".")
            layer = layers.setdefault(module, Layer(module, types.get(module, "?")))
            after = size - cuts.get((tensor, dim), 0)
            prefix = "" if attr == "weight" and dim == 0 else f"{attr}[{dim}] "
            layer.widths.append(f"{prefix}{size} → {after}" if after != size else f"{prefix}{size} kept")
            if group.id not in layer.groups:
                layer.groups.append(group.id)
    return layers


def _signature(members: Iterable[str], block: str, layers: dict[str, Layer]) -> tuple:
    return tuple(sorted((m[len(block):], layers[m].kind, tuple(layers[m].widths)) for m in members))


def _runs(blocks: dict[str, list[str]], layers: dict[str, Layer]) -> list[list[str]]:
    """Consecutive blocks with the same layers and widths (in index order)."""
    order = sorted(blocks, key=lambda b: int(_INDEX.match(b.rpartition(".")[2])["index"]))
    runs: list[list[str]] = []
    for block in order:
        sig = _signature(blocks[block], block, layers)
        if runs and _signature(blocks[runs[-1][0]], runs[-1][0], layers) == sig:
            runs[-1].append(block)
        else:
            runs.append([block])
    return runs


def collapse(flow: nx.DiGraph, layers: dict[str, Layer]) -> tuple[nx.DiGraph, dict[str, Layer]]:
    """Repeated blocks (`layer3.1`, `layer3.2` … or `layers.0` … with the same layers and widths)
    drawn once: the first of a run stays, the rest become one node."""
    merged: dict[str, str] = {}
    names = list(layers)
    for level in range(max((n.count(".") for n in names), default=0)):
        families: dict[tuple[str, str], dict[str, list[str]]] = defaultdict(lambda: defaultdict(list))
        for name in names:
            parts = name.split(".")
            found = _INDEX.match(parts[level]) if level < len(parts) - 1 and name not in merged else None
            if found:
                family = (".".join(parts[:level]), found["stem"])
                families[family][".".join(parts[: level + 1])].append(name)
        for blocks in families.values():
            for run in _runs(blocks, layers):
                rest = run[1:]
                if not rest:
                    continue
                node = f"{rest[0]} … {rest[-1]}" if len(rest) > 1 else rest[0]
                for block in rest:
                    merged.update({m: node for m in blocks[block]})
                layers = {**layers, node: Layer(node, f"like {run[0]}", blocks=len(rest))}
    out = nx.DiGraph()
    out.add_nodes_from(merged.get(n, n) for n in flow)
    out.add_edges_from((merged.get(a, a), merged.get(b, b), data) for a, b, data in flow.edges(data=True)
                       if merged.get(a, a) != merged.get(b, b))
    return out, {n: layers[n] for n in out if n in layers}


def cut_scope(flow: nx.DiGraph, scope: str, before: str, after: str) -> nx.DiGraph:
    """Only the layers under `scope`; edges from or to the rest go to `before` / `after` nodes."""
    inside = [n for n in flow if n == scope or n.startswith(scope + ".")]
    out = nx.DiGraph()
    out.add_node(before)
    out.add_nodes_from(inside)
    for a, b, data in flow.edges(data=True):
        if a in inside or b in inside:
            out.add_edge(a if a in inside else before, b if b in inside else after, **data)
    return out
