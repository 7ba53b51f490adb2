"""Shared by the benchmark scripts: the machine's description and docs/benchmarks.md sections.

Each script owns one section of docs/benchmarks.md, fenced by HTML comments, and rewrites only
that section, so scripts can be rerun one at a time.

Example:
    >>> write_section("speedup", "## Speed-up\\n...")
"""
from __future__ import annotations

import datetime
import importlib.metadata
import json
import os
import platform
import re
from pathlib import Path

__all__ = [
    "DOCS", "IMAGES", "RESULTS", "environment", "pyplot", "read_results", "save_figure",
    "write_results", "write_section",
]

ROOT = Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs" / "benchmarks.md"
IMAGES = ROOT / "docs" / "img"
RESULTS = ROOT / "benchmarks" / "results"
_PACKAGES = ("torch", "torchvision", "onnxruntime", "onnxscript", "torch-pruning")
_HEADER = """# Benchmarks

Produced by the scripts in `benchmarks/` (one script per question); rerun one to refresh its
section. Numbers are from one machine and a shared CPU, so treat small differences as noise.
"""


def environment() -> str:
    """One markdown line: date, CPU, cores and package versions.

    Example:
        >>> environment()  # '2025-01-01 · AMD EPYC · 2 cores · Python 3.11.7 · torch 2.14.1 …'
    """
    versions = []
    for name in _PACKAGES:
        try:
            versions.append(f"{name} {importlib.metadata.version(name)}")
        except importlib.metadata.PackageNotFoundError:
            versions.append(f"{name} (not installed)")
    return " · ".join(
        [datetime.date.today().isoformat(), _cpu(), f"{os.cpu_count()} cores",
         f"Python {platform.python_version()}", *versions]
    )


def write_section(name: str, markdown: str) -> Path:
    """Replace (or append) the section `name` of docs/benchmarks.md with `markdown`.

    Example:
        >>> write_section("coverage", "## Coverage\\n| model | ok |\\n")
    """
    start, end = f"<!-- {name}:start -->", f"<!-- {name}:end -->"
    block = f"{start}\n{markdown.strip()}\n{end}"
    text = DOCS.read_text() if DOCS.exists() else _HEADER
    pattern = re.compile(re.escape(start) + r".*?" + re.escape(end), flags=re.DOTALL)
    text = pattern.sub(lambda _: block, text) if pattern.search(text) else f"{text.rstrip()}\n\n{block}\n"
    DOCS.parent.mkdir(parents=True, exist_ok=True)
    DOCS.write_text(text)
    return DOCS


def write_results(name: str, rows: list[dict]) -> Path:
    """Save raw rows to benchmarks/results/<name>.json (the docs tables are made from them)."""
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / f"{name}.json"
    path.write_text(json.dumps(rows, indent=1) + "\n")
    return path


def read_results(name: str) -> list[dict]:
    """Rows saved by `write_results`, or [] when the benchmark has not run yet."""
    path = RESULTS / f"{name}.json"
    return json.loads(path.read_text()) if path.exists() else []


def pyplot():
    """matplotlib.pyplot on the file-only Agg backend (benchmarks never open windows)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def save_figure(fig, name: str) -> Path:
    """Write `fig` to docs/img/<name>.png, close it and return the path."""
    IMAGES.mkdir(parents=True, exist_ok=True)
    path = IMAGES / f"{name}.png"
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    pyplot().close(fig)
    return path


def _cpu() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()
