"""Global budgets: what `target_macs=` / `target_params=` add to a plan, and how close they land.

For each model (weights=None, input 1×3×224×224), traces, propagates and ranks once, then times
the uniform selection (`select` at ratio 0.5) and the global allocation (`core.budget.allocate`:
cost model, normalised scores, bisection) for target_macs=0.5 and target_params=0.5 — median of
three runs each. "Added" is allocation minus uniform selection. "Counted" is the slim model's
MACs (or parameters) over the original's, counted by `surgeon.util.count_macs` on the rebuilt
model (skipped for vit_h_14 with --no-count: a real forward of 167 G MACs).

Usage:
    python benchmarks/budget.py                    # vit_h_14, resnet50, vit_b_16 (~3 min, 2 cores)
    python benchmarks/budget.py --models vit_h_14 --no-count
Results go to benchmarks/results/budget.json and docs/benchmarks.md.
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch
import torchvision

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import environment, write_results, write_section  # noqa: E402

from surgeon.config import Config  # noqa: E402
from surgeon.core.budget import allocate  # noqa: E402
from surgeon.core.groups import Coupling  # noqa: E402
from surgeon.core.plan import make_plan, select  # noqa: E402
from surgeon.core.propagate import propagate  # noqa: E402
from surgeon.core.rank import score_units  # noqa: E402
from surgeon.core.trace import trace  # noqa: E402
from surgeon.util import as_inputs, count_macs, count_params  # noqa: E402

MODELS = ("vit_h_14", "resnet50", "vit_b_16")
LIMIT_S = 0.5  # issue 10: global allocation adds under 0.5 s on vit_h_14


def _median_s(fn, repeats: int = 3) -> tuple[float, object]:
    times, out = [], None
    for _ in range(repeats):
        start = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times), out


def run(name: str, *, count: bool) -> list[dict]:
    torch.manual_seed(0)
    model = torchvision.models.get_model(name, weights=None).eval()
    x = torch.randn(1, 3, 224, 224)
    graphs = trace(model, as_inputs(x))
    coupling = Coupling(propagate(model, graphs, Config(0.5)))
    scores = score_units(model, coupling)
    uniform, _ = _median_s(lambda: select(coupling, scores, 0.5))
    rows = []
    for metric in ("macs", "params"):
        config = Config(**{f"target_{metric}": 0.5})
        seconds, (removed, budget) = _median_s(lambda: allocate(model, graphs[0], coupling, scores, config))
        row = {"model": name, "metric": metric, "units": coupling.n_units, "groups": len(coupling.groups),
               "uniform_s": uniform, "allocate_s": seconds, "added_s": seconds - uniform,
               "estimated_keep": budget.reached / budget.total, "counted_keep": None}
        if count:
            slim = make_plan(coupling, removed, None, model=model, budget=budget).apply(model)
            before, after = ((count_macs(model, x), count_macs(slim, x)) if metric == "macs"
                             else (count_params(model), count_params(slim)))
            row["counted_keep"] = after / before
            del slim
        rows.append(row)
        print(row, flush=True)
    return rows


def _markdown(rows: list[dict]) -> str:
    vit = [r for r in rows if r["model"] == "vit_h_14"]
    worst = max((r["added_s"] for r in vit), default=None)
    verdict = ("not measured" if worst is None else
               f"{'met' if worst < LIMIT_S else '**missed**'} — {worst:.3f} s added at most")
    lines = [
        "## Global budgets: allocation time and landing",
        "",
        f"`python benchmarks/budget.py` — {environment()}",
        "",
        "Input 1×3×224×224, weights=None, L2 scores, target 0.5 of the MACs or parameters. Uniform: "
        "`select` at ratio 0.5; allocate: `core.budget.allocate` (cost model from the traced shapes, "
        "mean-normalised scores, bisection on a global threshold); median of 3 runs. Counted: the "
        "rebuilt model measured with `count_macs` / `count_params`, over the original.",
        "",
        f"**Target** (allocation adds < {LIMIT_S} s on vit_h_14): {verdict}",
        "",
        "| model | target | units | groups | uniform s | allocate s | added s | estimated keep | counted keep |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        counted = "—" if r["counted_keep"] is None else f"{r['counted_keep']:.4f}"
        lines.append(f"| {r['model']} | {r['metric']} 0.5 | {r['units']} | {r['groups']} | {r['uniform_s']:.3f} | "
                     f"{r['allocate_s']:.3f} | {r['added_s']:.3f} | {r['estimated_keep']:.4f} | {counted} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=list(MODELS))
    parser.add_argument("--no-count", action="store_true", help="do not count the rebuilt vit_h_14")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    rows = [r for name in args.models for r in run(name, count=not (args.no_count and name == "vit_h_14"))]
    write_results("budget", rows)
    write_section("budget", _markdown(rows))


if __name__ == "__main__":
    main()
