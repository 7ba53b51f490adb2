"""`--plot widths.png`: every layer's output width before → after, as bars (matplotlib)."""
from __future__ import annotations

from pathlib import Path
from typing import Any

from .extras import optional

__all__ = ["plot_widths", "BEFORE", "AFTER"]

BEFORE, AFTER = "#c6dbef", "#08519c"


def plot_widths(layers: list[dict[str, Any]], path: Path, *, title: str) -> Path:
    """Bars of each layer's output width (light: before, dark: after), in module order.

    Example:
        >>> plot_widths(layer_widths(model, slim), Path("widths.png"), title="resnet18 at 0.5")
    """
    optional("matplotlib", "pip install matplotlib")
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot as plt

    rows = [r for r in layers if "out" in r["before"]]
    n = max(len(rows), 1)
    fig, ax = plt.subplots(figsize=(min(max(6.0, 0.22 * n + 2), 30.0), 5.0), dpi=110)
    x = range(len(rows))
    ax.bar(x, [r["before"]["out"] for r in rows], width=0.85, color=BEFORE, label="before")
    ax.bar(x, [r["after"]["out"] for r in rows], width=0.55, color=AFTER, label="after")
    step = max(1, len(rows) // 60)
    ax.set_xticks(list(x)[::step], [r["name"] for r in rows][::step], rotation=90, fontsize=7)
    ax.set_xlim(-0.6, n - 0.4)
    ax.set_ylabel("output width (channels / features)")
    ax.set_title(title, fontsize=10)
    ax.legend(loc="upper left", frameon=False)
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)
    return path
