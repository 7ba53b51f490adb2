"""Data-aware scoring cost: calibration statistics + scores vs the plain passes they replace.

resnet50 (weights=None, eval mode), 8 calibration batches of 32 images. For each criterion the
scoring time (`core.calibrate.calibrate` over the batches, then `score_units` on its statistics;
trace and propagate are done once beforehand, as for every criterion) is compared with the time
of the same 8 plain passes of the model, measured in the same run: forward under `no_grad` for
activation / fluctuation, forward + backward of the mean squared output for taylor.

Usage:
    python benchmarks/calibration.py              # 224×224 (slow on 2 cores)
    python benchmarks/calibration.py --size 112   # what docs/benchmarks.md reports on 2 cores
Results go to benchmarks/results/calibration.json and docs/benchmarks.md.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch
import torchvision

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import environment, write_results, write_section  # noqa: E402

from surgeon.config import Config  # noqa: E402
from surgeon.core.calibrate import calibrate  # noqa: E402
from surgeon.core.groups import Coupling  # noqa: E402
from surgeon.core.propagate import propagate  # noqa: E402
from surgeon.core.rank import score_units  # noqa: E402
from surgeon.core.trace import trace  # noqa: E402
from surgeon.util import as_inputs  # noqa: E402

LIMIT = 2.0  # issue 10: scoring under 2x the time of the plain passes
CRITERIA = ("activation", "fluctuation", "taylor")


def _seconds(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def _plain(model: torch.nn.Module, batches: list[torch.Tensor], backward: bool) -> None:
    params = [p for p in model.parameters()]
    for x in batches:
        if backward:
            torch.autograd.grad(model(x).pow(2).mean(), params)
        else:
            with torch.no_grad():
                model(x)


def run(size: int, n_batches: int, batch: int) -> list[dict]:
    torch.manual_seed(0)
    model = torchvision.models.resnet50(weights=None).eval()
    batches = [torch.randn(batch, 3, size, size) for _ in range(n_batches)]
    example = as_inputs(batches[0][:1])
    graphs = trace(model, example)
    coupling = Coupling(propagate(model, graphs, Config(0.5)))
    _plain(model, batches[:1], backward=True)  # warm-up: allocator, autograd
    rows = []
    for importance in CRITERIA:
        gradients = importance == "taylor"
        plain = _seconds(lambda: _plain(model, batches, gradients))

        def score() -> None:
            stats = calibrate(model, graphs[0], coupling, batches, example,
                              activations=not gradients, gradients=gradients)
            score_units(model, coupling, importance, stats=stats)

        scoring = _seconds(score)
        rows.append({"model": "resnet50", "importance": importance, "size": size, "batches": n_batches,
                     "batch": batch, "plain_s": plain, "scoring_s": scoring, "ratio": scoring / plain})
        print(rows[-1], flush=True)
    return rows


def _markdown(rows: list[dict], threads: int) -> str:
    worst = max(r["ratio"] for r in rows)
    r0 = rows[0]
    lines = [
        "## Data-aware importance: scoring time vs plain passes",
        "",
        f"`python benchmarks/calibration.py --size {r0['size']}` — {environment()} · {threads} threads",
        "",
        f"resnet50 (weights=None, eval), {r0['batches']} batches of {r0['batch']} random images at "
        f"{r0['size']}×{r0['size']}"
        + (" (not 224×224: eight 224×224 forward + backward passes take minutes on 2 shared cores; "
           "run without `--size` on a bigger machine)" if r0["size"] != 224 else "")
        + ". Scoring: `calibrate` over the batches then `score_units` (trace and propagate done "
        "once before, as for L2). Plain: the same batches through the model, forward under "
        "`no_grad` (activation, fluctuation) or forward + backward of the mean squared output "
        "(taylor), measured in the same run just before.",
        "",
        f"**Target** (scoring < {LIMIT:.0f}× the plain passes): "
        + (f"met — {worst:.2f}× at most" if worst < LIMIT else f"**missed** — {worst:.2f}× at most"),
        "",
        "| criterion | plain s | scoring s | scoring / plain |",
        "|---|---:|---:|---:|",
    ]
    lines += [f"| {r['importance']} | {r['plain_s']:.2f} | {r['scoring_s']:.2f} | {r['ratio']:.2f}× |" for r in rows]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--batches", type=int, default=8)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    rows = run(args.size, args.batches, args.batch)
    write_results("calibration", rows)
    write_section("calibration", _markdown(rows, args.threads))


if __name__ == "__main__":
    main()
