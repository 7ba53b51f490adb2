"""The dependency-graph picture: Graphviz DOT text (layers as nodes, coupled groups coloured,
frozen ones grey with their reason), rendered by the `dot` program when it is installed."""
from __future__ import annotations

import re
import shutil
import subprocess
import textwrap
from pathlib import Path
from typing import TYPE_CHECKING

import networkx as nx

from ..errors import InputError
from .layers import Layer

if TYPE_CHECKING:
    from ..core.groups import Group

__all__ = ["to_dot", "render", "PALETTE", "FROZEN", "COLLAPSED"]

PALETTE = ("#8dd3c7", "#ffffb3", "#bebada", "#fb8072", "#80b1d3", "#fdb462", "#b3de69", "#fccde5",
           "#bc80bd", "#ccebc5", "#ffed6f", "#a6cee3")
FROZEN = "#d9d9d9"
COLLAPSED = "#f4f4f4"
_NODE_PREFIX = re.compile(r"^node '[^']*' \([^)]*\): ")


def _quote(text: str) -> str:
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n") + '"'


def _reason(group: Group) -> str:
    """The first frozen reason, without the fx node it was found at, wrapped for a label."""
    why = _NODE_PREFIX.sub("", group.frozen_why[0]) if group.frozen_why else "frozen"
    return "\n".join(textwrap.wrap(why, 34, max_lines=3, placeholder=" …"))


def _node(layer: Layer, groups: dict[int, Group], colours: dict[int, str]) -> dict[str, str]:
    """DOT attributes of one layer (or of a run of collapsed blocks)."""
    if layer.blocks:
        more = f"{layer.blocks} more block{'s' if layer.blocks > 1 else ''} {layer.kind}"
        return {"label": f"{layer.name}\n{more}", "shape": "box3d", "style": "filled", "fillcolor": COLLAPSED}
    lines = [layer.name, f"{layer.kind} · {', '.join(layer.widths)}",
             ("group " if len(layer.groups) == 1 else "groups ") + ", ".join(map(str, layer.groups))]
    frozen = [g for g in layer.groups if groups[g].prunable <= 0]
    partly = [g for g in layer.groups if 0 < groups[g].frozen_units and g not in frozen]
    for g in (frozen or partly)[:1]:
        share = "frozen" if g in frozen else f"{groups[g].frozen_units} of {groups[g].units} frozen"
        lines.append(f"{share}: {_reason(groups[g])}")
    fills = list(dict.fromkeys(colours[g] for g in layer.groups if g not in frozen))[:4] or [FROZEN]
    style = "striped" if len(fills) > 1 else "rounded,filled" + (",dashed" if fills == [FROZEN] else "")
    return {"label": "\n".join(lines), "fillcolor": ":".join(fills), "style": style}


def to_dot(flow: nx.DiGraph, layers: dict[str, Layer], groups: list[Group], *, title: str) -> str:
    """DOT text: `flow`'s nodes in order, `layers` drawn with their groups' colours.

    Example:
        >>> text = to_dot(flow, layers, plan.groups, title="resnet18")
        >>> text.startswith("digraph")
        True
    """
    by_id = {g.id: g for g in groups}
    colours: dict[int, str] = {}
    for name in flow:
        for g in layers[name].groups if name in layers else ():
            if by_id[g].prunable > 0 and g not in colours:
                colours[g] = PALETTE[len(colours) % len(PALETTE)]
    legend = ("same colour: one coupled group (the same channels leave every layer in it) · grey, dashed: "
              "frozen, with the reason · widths: before → after")
    heading = _quote(f"{title}\n{legend}")
    out = ["digraph surgeon {",
           f"  graph [rankdir=TB, labelloc=t, fontname=Helvetica, fontsize=12, label={heading}];",
           "  node [shape=box, fontname=Helvetica, fontsize=10, margin=\"0.12,0.04\"];",
           "  edge [color=\"#777777\", arrowsize=0.6];"]
    for name in flow:
        if name in layers:
            attrs = _node(layers[name], by_id, colours)
        else:
            attrs = {"label": name, "shape": "ellipse", "style": "filled", "fillcolor": "white"}
        out.append(f"  {_quote(name)} [{', '.join(f'{k}={_quote(v)}' for k, v in attrs.items())}];")
    out += [f"  {_quote(a)} -> {_quote(b)}" + (" [style=dashed, arrowhead=none];" if part else ";")
            for a, b, part in flow.edges(data="part")]
    out.append("}")
    return "\n".join(out) + "\n"


def render(text: str, path: Path) -> tuple[Path, str | None]:
    """Write `text` as `path`: DOT for .dot/.gv, else drawn by Graphviz's `dot` (svg, png, pdf …).
    Without `dot`, the DOT text goes next to it and the note says how to draw it."""
    fmt = path.suffix.lstrip(".").lower()
    if not fmt:
        raise InputError(f"--graph {path} needs a file extension: .svg, .png, .pdf or .dot")
    path.parent.mkdir(parents=True, exist_ok=True)
    if fmt in ("dot", "gv"):
        path.write_text(text)
        return path, None
    program = shutil.which("dot")
    if program is None:
        fallback = path.with_suffix(".dot")
        fallback.write_text(text)
        return fallback, (f"Graphviz's dot program is not installed (apt-get install graphviz, or brew install "
                          f"graphviz): wrote {fallback}; draw it with dot -T{fmt} {fallback} -o {path}")
    done = subprocess.run([program, f"-T{fmt}", "-o", str(path)], input=text, text=True, capture_output=True)
    if done.returncode != 0:
        why = " ".join(done.stderr.split())[:200]
        raise InputError(f"dot cannot write {path}: {why}; use .svg, .png, .pdf or .dot")
    return path, None
