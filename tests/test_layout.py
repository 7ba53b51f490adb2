"""The package layout tells the pipeline: import floors stay shallow, no stage imports a later one."""
from __future__ import annotations

import ast
from functools import cache
from pathlib import Path

import networkx as nx

ROOT = Path(__import__("surgeon").__file__).parent
STAGES = ["trace", "propagate", "groups", "rank", "plan", "rebuild", "verify"]


def _name(path: Path) -> str:
    parts = path.relative_to(ROOT.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _runtime_imports(tree: ast.Module) -> list[ast.stmt]:
    """Import statements run when the module loads (`if TYPE_CHECKING:` blocks excluded)."""
    found: list[ast.stmt] = []
    for node in tree.body:
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            found.append(node)
        elif isinstance(node, ast.Try):
            found += [n for n in node.body if isinstance(n, (ast.Import, ast.ImportFrom))]
        elif isinstance(node, ast.If) and "TYPE_CHECKING" not in ast.unparse(node.test):
            found += [n for n in node.body if isinstance(n, (ast.Import, ast.ImportFrom))]
        elif isinstance(node, ast.For):
            found += [n for n in ast.walk(node) if isinstance(n, (ast.Import, ast.ImportFrom))]
    return found


@cache
def modules() -> dict[str, Path]:
    return {_name(p): p for p in ROOT.rglob("*.py")}


def _targets(name: str) -> set[str]:
    """Package-internal modules `name` imports at load time."""
    path = modules()[name]
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    out: set[str] = set()
    for node in _runtime_imports(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            out |= {a.name for a in node.names if a.name.startswith("surgeon")}
            continue
        base = package
        for _ in range(node.level - 1):
            base = base.rpartition(".")[0]
        mod = f"{base}.{node.module}" if node.level and node.module else (base if node.level else node.module)
        if not mod or not mod.startswith("surgeon"):
            continue
        subs = {f"{mod}.{a.name}" for a in node.names if f"{mod}.{a.name}" in modules()}
        out |= subs or {mod}
    return {t for t in out if t in modules() and t != name}


@cache
def graph() -> nx.DiGraph:
    """Import graph with package `__init__` files made transparent (an import of a package
    stands for the imports its `__init__` makes)."""
    raw = nx.DiGraph()
    for name in modules():
        raw.add_node(name)
        raw.add_edges_from((name, t) for t in _targets(name))
    inits = {n for n in raw if modules()[n].name == "__init__.py"}
    g = nx.DiGraph()
    for name in set(raw) - inits:
        g.add_node(name)
        stack, seen = list(raw.successors(name)), set()
        while stack:
            t = stack.pop()
            if t in seen:
                continue
            seen.add(t)
            if t in inits:
                stack += list(raw.successors(t))
            elif t != name:
                g.add_edge(name, t)
    return g


def test_no_import_cycles():
    cycles = list(nx.simple_cycles(graph()))
    assert not cycles, cycles


def test_longest_import_chain_is_at_most_seven_modules():
    chain = nx.dag_longest_path(graph())
    assert len(chain) <= 7, " -> ".join(chain)


def test_no_core_stage_imports_a_later_stage():
    g = graph()
    for i, stage in enumerate(STAGES):
        later = {f"surgeon.core.{s}" for s in STAGES[i + 1:]}
        assert not later & set(g.successors(f"surgeon.core.{stage}")), stage


def test_the_tree_shows_the_pipeline():
    for folder in ("core", "ops", "layers", "sparse", "deploy"):
        assert (ROOT / folder / "__init__.py").exists()
    for stage in STAGES + ["labels", "atoms"]:
        assert (ROOT / "core" / f"{stage}.py").exists()
    too_long = [n for n, p in modules().items() if len(p.read_text().splitlines()) > 420]
    assert not too_long, too_long


def test_public_imports_keep_working():
    import surgeon
    import surgeon.masks
    from surgeon.schedule import iterative

    assert surgeon.masks is surgeon.sparse.masks and callable(iterative)
    for verb in ("slim", "plan", "analyze", "verify", "recalibrate", "export_onnx", "measure", "Config"):
        assert hasattr(surgeon, verb)
