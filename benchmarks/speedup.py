"""Speed-up: does onnxruntime CPU latency fall as fast as MACs when surgeon slims a model?

For each model and each ratio (0.3 / 0.5 / 0.7) and round_to (1 / 8 / 16), slims a freshly built
model (weights=None, input 1×3×224×224) and measures it with `surgeon.measure` (onnxruntime
CPUExecutionProvider and PyTorch, threads pinned, median of repeated runs after warm-up).
Keep = slim / unpruned.

Usage:
    python benchmarks/speedup.py               # all models, ratios and round_to (~8 min, 2 cores)
    python benchmarks/speedup.py --quick       # resnet50 and mobilenet_v2 at ratio 0.5
    python benchmarks/speedup.py --models vit_b_16 --threads 2
Results are merged into benchmarks/results/speedup.json (rows keyed by model, ratio and
round_to) and written to docs/benchmarks.md and docs/img/speedup.png.
"""
from __future__ import annotations

import argparse
import sys
import time
import warnings
from pathlib import Path

import torch
import torchvision

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import (  # noqa: E402
    environment, pyplot, read_results, save_figure, write_results, write_section,
)

import surgeon  # noqa: E402
from surgeon.deploy.measure import Measurement, measure  # noqa: E402

MODELS = ("resnet50", "mobilenet_v2", "efficientnet_b0", "vit_b_16")
TARGET_MODELS = ("resnet50", "mobilenet_v2", "vit_b_16")
QUICK_MODELS = ("resnet50", "mobilenet_v2")
RATIOS = (0.3, 0.5, 0.7)
ROUND_TO = (1, 8, 16)  # 16: the NCHWc block width of onnxruntime's AVX-512 convolutions
TARGET_SLACK = 1.15
NOISE = 0.03  # run-to-run spread of a median on this shared machine; smaller differences are ties


def _build(name: str) -> torch.nn.Module:
    torch.manual_seed(0)
    return torchvision.models.get_model(name, weights=None).eval()


def _key(row: dict) -> tuple[str, float, int]:
    return row["model"], row["ratio"], row["round_to"]


def _keeps(before: Measurement, after: Measurement) -> dict:
    return {
        "param_keep": after.params / before.params,
        "mac_keep": after.macs / before.macs,
        "onnx_keep": after.onnx_ms / before.onnx_ms,
        "torch_keep": after.torch_ms / before.torch_ms,
        "onnx_ms": after.onnx_ms,
        "torch_ms": after.torch_ms,
    }


def run_model(name: str, ratios: tuple[float, ...], *, repeats: int, threads: int) -> list[dict]:
    """Baseline and every (ratio, round_to) slim of one model, failures recorded with why."""
    x = torch.randn(1, 3, 224, 224)
    before = measure(_build(name), x, repeats=repeats, threads=threads)
    rows = [{"model": name, "ratio": 0.0, "round_to": 1, "ok": True, **_keeps(before, before)}]
    for ratio in ratios:
        for round_to in ROUND_TO:
            row = {"model": name, "ratio": ratio, "round_to": round_to}
            try:
                slim = surgeon.slim(_build(name), ratio, x, round_to=round_to, inplace=True)
                rows.append({**row, "ok": True,
                             **_keeps(before, measure(slim, x, repeats=repeats, threads=threads))})
            except Exception as e:
                rows.append({**row, "ok": False,
                             "error": f"{type(e).__name__}: {str(e).strip()[:160]}".splitlines()[0]})
            print(f"  {name} ratio {ratio} round_to {round_to}: "
                  f"{'ok' if rows[-1]['ok'] else rows[-1]['error']}", flush=True)
    return rows


def _verdicts(rows: list[dict]) -> list[str]:
    """Markdown lines checking both targets, saying by how much a miss is."""
    ok = {(r["model"], r["ratio"], r["round_to"]): r for r in rows if r["ok"]}
    lines = [f"| model | round_to | MAC keep | latency keep | latency / MAC keep | "
             f"target ≤ {TARGET_SLACK} |", "|---|---:|---:|---:|---:|---|"]
    for model in TARGET_MODELS:
        for round_to in (1, 8):
            row = ok.get((model, 0.5, round_to))
            if row is None:
                lines.append(f"| {model} | {round_to} | — | — | — | not measured (slim failed) |")
                continue
            excess = row["onnx_keep"] / row["mac_keep"]
            verdict = "met" if excess <= TARGET_SLACK else f"missed by {excess / TARGET_SLACK:.2f}×"
            lines.append(f"| {model} | {round_to} | {row['mac_keep']:.3f} | {row['onnx_keep']:.3f} | "
                         f"{excess:.2f} | {verdict} |")
    slower = {
        (m, r): ok[m, r, 8]["onnx_ms"] / ok[m, r, 1]["onnx_ms"] - 1
        for (m, r, t) in ok if t == 1 and r > 0 and (m, r, 8) in ok
        and ok[m, r, 8]["onnx_ms"] > ok[m, r, 1]["onnx_ms"]
    }
    missed = {k: v for k, v in slower.items() if v > NOISE}
    ties = ", ".join(f"{m} at {r} (+{v:.1%})" for (m, r), v in slower.items() if v <= NOISE)
    verdict = "met"
    if missed:
        verdict = "missed — " + "; ".join(f"{m} at {r}: +{v:.1%}" for (m, r), v in missed.items())
    note = f" Slower only within the {NOISE:.0%} noise band: {ties}." if ties else ""
    lines += ["", f"**round_to=8 never slower than round_to=1:** {verdict}.{note}"]
    return lines


def markdown(rows: list[dict], image: Path | None, *, threads: int, repeats: int) -> str:
    lines = [
        "## Speed-up: onnxruntime latency keep vs MAC keep",
        "",
        f"`python benchmarks/speedup.py` — {environment()}",
        "",
        f"Input 1×3×224×224, weights=None, {threads} thread(s) for PyTorch and onnxruntime "
        f"(CPUExecutionProvider), median of {repeats} runs after warm-up. Keep = slim / unpruned; "
        "latency keep below MAC keep means the slim model gained more than its MACs suggest.",
        "",
        f"### Targets at ratio 0.5 (latency keep ≤ {TARGET_SLACK} × MAC keep)",
        "",
        *_verdicts(rows),
    ]
    if image:
        lines += ["", f"![latency keep vs MAC keep]({image.relative_to(image.parent.parent).as_posix()})"]
    lines += ["", "### All runs", "",
              "| model | ratio | round_to | param keep | MAC keep | ORT ms | ORT keep | PyTorch ms | "
              "PyTorch keep |", "|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        if r["ok"]:
            lines.append(f"| {r['model']} | {r['ratio']} | {r['round_to']} | {r['param_keep']:.3f} | "
                         f"{r['mac_keep']:.3f} | {r['onnx_ms']:.1f} | {r['onnx_keep']:.3f} | "
                         f"{r['torch_ms']:.1f} | {r['torch_keep']:.3f} |")
        else:
            lines.append(f"| {r['model']} | {r['ratio']} | {r['round_to']} | fail: "
                         f"{r['error'].replace('|', '/')} | | | | | |")
    return "\n".join(lines)


def plot(rows: list[dict]) -> Path | None:
    """Latency keep against MAC keep: a colour per model; round_to 1 hollow, 8 filled, 16 square."""
    plt = pyplot()
    done = [r for r in rows if r["ok"] and r["ratio"] > 0]
    if not done:
        return None
    fig, ax = plt.subplots(figsize=(9, 5))
    colours = dict(zip(MODELS, plt.rcParams["axes.prop_cycle"].by_key()["color"]))
    for model in dict.fromkeys(r["model"] for r in done):
        colour = colours.get(model, "k")
        for round_to, marker, fill in ((1, "o", "none"), (8, "o", colour), (16, "s", colour)):
            pts = [r for r in done if r["model"] == model and r["round_to"] == round_to]
            if pts:
                ax.scatter([r["mac_keep"] for r in pts], [r["onnx_keep"] for r in pts], s=36,
                           marker=marker, facecolors=fill, edgecolors=colour,
                           label=f"{model}, round_to={round_to}")
    ax.plot([0, 1], [0, 1], "k--", lw=0.8, label="latency keep = MAC keep")
    ax.plot([0, 1], [0, TARGET_SLACK], "r:", lw=1.0, label=f"target: {TARGET_SLACK}× MAC keep")
    top = max(1.1, max(r["onnx_keep"] for r in done) + 0.05)
    ax.set(xlim=(0, 1), ylim=(0, top), xlabel="MAC keep (slim / unpruned)",
           ylabel="onnxruntime CPU latency keep", title="Latency keep vs MAC keep, batch 1")
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1))
    return save_figure(fig, "speedup")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true",
                        help="ratio 0.5 only; resnet50 and mobilenet_v2")
    parser.add_argument("--models", nargs="+", help=f"default: {' '.join(MODELS)}")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=30)
    args = parser.parse_args()
    models = args.models or (QUICK_MODELS if args.quick else MODELS)
    ratios = (0.5,) if args.quick else RATIOS
    warnings.filterwarnings("ignore", category=FutureWarning)
    rows = {_key(r): r for r in read_results("speedup")}
    for name in models:
        start = time.perf_counter()
        rows.update((_key(r), r) for r in run_model(name, ratios, repeats=args.repeats, threads=args.threads))
        print(f"{name}: {time.perf_counter() - start:.0f} s", flush=True)
    rows = [rows[k] for k in sorted(rows)]
    write_results("speedup", rows)
    text = markdown(rows, plot(rows), threads=args.threads, repeats=args.repeats)
    print(write_section("speedup", text))


if __name__ == "__main__":
    main()
