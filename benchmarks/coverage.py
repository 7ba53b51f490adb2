"""Coverage and surgery time: surgeon vs Torch-Pruning 1.6.1 on the torchvision classification zoo.

Same models, same input (1×3×224×224), ratio 0.5, L2 magnitude, one thread, one subprocess per
model in which both tools run one after the other (each on a freshly built model, after a
warm-up on a tiny CNN so one-time costs are not charged to the first model). Reports ok/fail
(ok = the call returned and the output shape is unchanged), surgery seconds, peak extra memory
(Linux peak RSS, reset before each tool), parameter keep and MAC keep.

Usage:
    python benchmarks/coverage.py             # default tier: 70 models, ~25 min on 2 busy cores
    python benchmarks/coverage.py --quick     # the four target models and a few more
    python benchmarks/coverage.py --slow      # the whole zoo, the largest models included
    python benchmarks/coverage.py --models resnet50 vgg16_bn
Results are merged into benchmarks/results/coverage.json and docs/benchmarks.md is rewritten.
"""
from __future__ import annotations

import argparse
import gc
import json
import signal
import subprocess
import sys
import time
import warnings
from pathlib import Path

import torch
import torchvision
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import (  # noqa: E402
    environment, pyplot, read_results, save_figure, write_results, write_section,
)

from surgeon.deploy.measure import count_macs, count_params  # noqa: E402

RATIO = 0.5
TOOLS = ("surgeon", "torch-pruning")
TARGETS = ("resnet50", "densenet121", "vgg16_bn", "efficientnet_b0")
QUICK = (*TARGETS, "resnet18", "mobilenet_v2", "convnext_tiny", "vit_b_16")
STAGED = ("resnet50", "efficientnet_b0", "mobilenet_v2", "densenet121", "vit_b_16", "vit_h_14")
STAGES = ("trace", "propagate", "rank", "plan", "rebuild", "check")
SLOW = frozenset({
    "convnext_large", "efficientnet_b7", "efficientnet_v2_l", "regnet_x_32gf", "regnet_y_32gf",
    "regnet_y_128gf", "vit_h_14", "vit_l_16", "vit_l_32", "wide_resnet101_2",
})
SURGERY_TIMEOUT_S = 60  # one surgery; Torch-Pruning hangs on swin / maxvit for minutes
TIMEOUT_S = 900  # backstop for the whole subprocess


def prune_with_surgeon(model: nn.Module, x: torch.Tensor) -> nn.Module:
    import surgeon

    return surgeon.slim(model, RATIO, x, importance="l2", inplace=True)


def prune_with_torch_pruning(model: nn.Module, x: torch.Tensor) -> nn.Module:
    """Torch-Pruning as its own torchvision prunability script sets it up."""
    import torch_pruning as tp
    from torchvision.models import VisionTransformer

    ignored = [
        m for m in model.modules()
        if isinstance(m, nn.modules.linear.NonDynamicallyQuantizableLinear)
        or (isinstance(m, nn.Linear) and m.out_features == 1000)
        or (isinstance(m, nn.Conv2d) and m.out_channels == 1000)
    ]
    vit = isinstance(model, VisionTransformer)
    pruner = tp.pruner.MetaPruner(
        model, x, importance=tp.importance.MagnitudeImportance(p=2), pruning_ratio=RATIO,
        ignored_layers=ignored, round_to=model.encoder.layers[0].num_heads if vit else None,
    )
    pruner.step()
    if vit:  # torchvision's forward reads hidden_dim; Torch-Pruning leaves it stale
        model.hidden_dim = model.conv_proj.out_channels
    return model


PRUNERS = {"surgeon": prune_with_surgeon, "torch-pruning": prune_with_torch_pruning}


def _build(name: str) -> nn.Module:
    torch.manual_seed(0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # googlenet / inception init-weights notices
        return torchvision.models.get_model(name, weights=None).eval()


def _status(field: str) -> int | None:
    """A /proc/self/status memory field in bytes (None off Linux)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024
    except OSError:
        return None
    return None


def _reset_peak_rss() -> bool:
    """Reset the kernel's peak-RSS counter (VmHWM) to the current RSS."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


def _warm_up() -> None:
    tiny = nn.Sequential(nn.Conv2d(3, 8, 3), nn.BatchNorm2d(8), nn.ReLU(), nn.Conv2d(8, 8, 3),
                         nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 1000))
    for prune in PRUNERS.values():
        try:
            prune(tiny, torch.randn(1, 3, 16, 16))
        except Exception:  # a tool that fails here fails on the zoo too, and is reported there
            pass


def _prune_once(tool: str, name: str, x: torch.Tensor, *, timeout: int = SURGERY_TIMEOUT_S,
                ) -> tuple[nn.Module, float, float | None]:
    """Prune a freshly built model: the result, seconds, and peak extra memory in MiB.

    Raises TimeoutError when the surgery takes over `timeout` seconds.
    """

    def time_out(signum: int, frame: object) -> None:
        raise TimeoutError(f"surgery took over {timeout} s")

    model = _build(name)
    gc.collect()
    resettable = _reset_peak_rss()
    base = _status("VmRSS")
    signal.signal(signal.SIGALRM, time_out)
    signal.alarm(timeout)
    start = time.perf_counter()
    try:
        model = PRUNERS[tool](model, x)
    finally:
        signal.alarm(0)
    seconds = time.perf_counter() - start
    peak = _status("VmHWM")
    return model, seconds, (peak - base) / 2**20 if resettable and peak and base else None


def _run_tool(tool: str, name: str, x: torch.Tensor, before: dict, *, repeats: int) -> dict:
    """Best-of-`repeats` surgery time (the machine is shared), checked output shape, keeps."""
    row = {"model": name, "tool": tool}
    try:
        runs, stages = [], {}
        for _ in range(repeats):
            model, seconds, mb = _prune_once(tool, name, x)
            if not runs or seconds < min(r[0] for r in runs):
                stages = dict(getattr(model, "surgeon_timings", {}))
            runs.append((seconds, mb))
        with torch.no_grad():
            shape = tuple(model(x).shape)
        if shape != before["shape"]:
            raise RuntimeError(f"output shape {shape}, expected {before['shape']}")
        memory = [mb for _, mb in runs if mb is not None]
        return {
            **row, "ok": True, "seconds": min(seconds for seconds, _ in runs),
            "extra_mb": max(memory) if memory else None,
            "param_keep": count_params(model) / before["params"],
            "mac_keep": count_macs(model, x) / before["macs"],
            **({"stages": stages} if stages else {}),
        }
    except Exception as e:
        return {**row, "ok": False, "error": _error(e)}


def _error(e: BaseException) -> str:
    """`Type: first line of the message` (160 characters at most), for a table cell."""
    message = str(e).strip().splitlines()[0][:160] if str(e).strip() else ""
    return f"{type(e).__name__}: {message}"


def child(name: str, *, repeats: int) -> None:
    """Run both tools on one model; print one JSON line per tool as soon as it finishes."""
    torch.set_num_threads(1)
    x = torch.randn(1, 3, 224, 224)
    _warm_up()
    reference = _build(name)
    with torch.no_grad():
        before = {"params": count_params(reference), "macs": count_macs(reference, x),
                  "shape": tuple(reference(x).shape)}
    del reference
    for tool in TOOLS:
        print(json.dumps(_run_tool(tool, name, x, before, repeats=repeats)), flush=True)


def run_model(name: str, *, repeats: int, timeout: float) -> list[dict]:
    """One subprocess per model; tools it could not report on are marked failed with why."""
    command = [sys.executable, __file__, "--child", name, "--repeats", str(repeats)]
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=timeout)
        stdout, why = done.stdout, (done.stderr.strip().splitlines() or ["crashed"])[-1][:160]
    except subprocess.TimeoutExpired as e:
        stdout, why = (e.stdout or b"").decode(), f"timeout after {timeout:.0f} s"
    rows = [json.loads(line) for line in stdout.splitlines() if line.startswith("{")]
    seen = {row["tool"] for row in rows}
    return rows + [{"model": name, "tool": t, "ok": False, "error": why} for t in TOOLS if t not in seen]


def _cell(row: dict) -> list[str]:
    if not row.get("ok"):
        return ["fail", "", "", "", ""]
    mb = "" if row["extra_mb"] is None else f"{row['extra_mb']:.0f}"
    return ["ok", f"{row['seconds']:.2f}", mb, f"{row['param_keep']:.3f}", f"{row['mac_keep']:.3f}"]


def markdown(rows: list[dict], image: Path | None) -> str:
    by = {(r["model"], r["tool"]): r for r in rows}
    models = sorted({r["model"] for r in rows})
    ok = {t: sum(by[m, t].get("ok", False) for m in models if (m, t) in by) for t in TOOLS}
    lines = [
        "## Coverage and surgery time vs Torch-Pruning",
        "",
        f"`python benchmarks/coverage.py` — {environment()}",
        "",
        f"Ratio {RATIO}, L2 magnitude, input 1×3×224×224, 1 thread, weights=None; surgery time "
        "is the best of `--repeats` runs, each on a freshly built model. surgeon runs "
        "`slim(model, 0.5, x, inplace=True)` with no model-specific help; Torch-Pruning runs "
        "`MetaPruner` set up as its own torchvision prunability script does (classifier and "
        "attention out-projections ignored, ViT rounded to num_heads and `hidden_dim` patched). "
        "Peak extra memory (MB) is the rise of the process's peak RSS during the call (the "
        "largest over the repeats).",
        "",
        f"**Models pruned:** surgeon {ok['surgeon']}/{len(models)}, "
        f"Torch-Pruning {ok['torch-pruning']}/{len(models)}.",
        "",
        "### Surgery time targets (surgeon ≤ 0.5× Torch-Pruning)",
        "",
        "| model | surgeon s | Torch-Pruning s | ratio | target ≤ 0.5 |",
        "|---|---:|---:|---:|---|",
    ]
    for m in TARGETS:
        s, t = by.get((m, "surgeon"), {}), by.get((m, "torch-pruning"), {})
        if s.get("ok") and t.get("ok"):
            ratio = s["seconds"] / t["seconds"]
            verdict = "met" if ratio <= 0.5 else f"missed: {ratio / 0.5:.1f}× the target ratio"
            lines.append(f"| {m} | {s['seconds']:.2f} | {t['seconds']:.2f} | {ratio:.2f} | {verdict} |")
        else:
            lines.append(f"| {m} | {'ok' if s.get('ok') else 'fail'} | "
                         f"{'ok' if t.get('ok') else 'fail'} | — | not measurable |")
    lines += ["", "### Where surgeon's time goes (milliseconds per stage, best run)", "",
              "| model | " + " | ".join(STAGES) + " | total | Torch-Pruning |", "|---" * (len(STAGES) + 3) + "|"]
    for m in STAGED:
        s, t = by.get((m, "surgeon"), {}), by.get((m, "torch-pruning"), {})
        if s.get("stages"):
            cells = [f"{1000 * s['stages'].get(k, 0.0):.0f}" for k in STAGES]
            tp_ms = f"{1000 * t['seconds']:.0f}" if t.get("ok") else "fail"
            lines.append(f"| {m} | {' | '.join(cells)} | {1000 * s['seconds']:.0f} | {tp_ms} |")
    if image:
        lines += ["", f"![surgery time]({image.relative_to(image.parent.parent).as_posix()})"]
    head = "| model | surgeon | s | MB | param keep | MAC keep | TP | s | MB | param keep | MAC keep |"
    lines += ["", "### Per model", "", head, "|---" * 11 + "|"]
    for m in models:
        cells = [m, *_cell(by.get((m, "surgeon"), {})), *_cell(by.get((m, "torch-pruning"), {}))]
        lines.append("| " + " | ".join(cells) + " |")
    failures = [r for r in rows if not r.get("ok")]
    if failures:
        lines += ["", "### Failures", "", "| model | tool | error |", "|---|---|---|"]
        lines += [f"| {r['model']} | {r['tool']} | {r['error'].replace('|', '/')} |"
                  for r in sorted(failures, key=lambda r: (r["tool"], r["model"]))]
    return "\n".join(lines)


def plot(rows: list[dict]) -> Path | None:
    """Log-log scatter: surgeon seconds against Torch-Pruning seconds, with y = x and y = x/2."""
    plt = pyplot()
    by = {(r["model"], r["tool"]): r for r in rows if r.get("ok")}
    pairs = [(m, by[m, "torch-pruning"]["seconds"], by[m, "surgeon"]["seconds"])
             for m, t in by if t == "surgeon" and (m, "torch-pruning") in by]
    if not pairs:
        return None
    fig, ax = plt.subplots(figsize=(6, 5))
    ax.scatter([p[1] for p in pairs], [p[2] for p in pairs], s=14)
    for m, tp_s, s in pairs:
        if m in TARGETS:
            ax.annotate(m, (tp_s, s), fontsize=8, xytext=(4, 2), textcoords="offset points")
    low = min(min(p[1], p[2]) for p in pairs) / 1.5
    high = max(max(p[1], p[2]) for p in pairs) * 1.5
    ax.plot([low, high], [low, high], "k--", lw=0.8, label="same time")
    ax.plot([low, high], [low / 2, high / 2], "g:", lw=1.0, label="target: half the time")
    ax.set(xscale="log", yscale="log", xlabel="Torch-Pruning surgery time (s)",
           ylabel="surgeon surgery time (s)", title=f"Surgery time, ratio {RATIO}, 1 thread")
    ax.legend()
    return save_figure(fig, "coverage_time")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    tier = parser.add_mutually_exclusive_group()
    tier.add_argument("--quick", action="store_true", help="target models and a few more")
    tier.add_argument("--slow", action="store_true", help="include the largest models")
    tier.add_argument("--models", nargs="+", help="these torchvision model names only")
    tier.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--timeout", type=float, default=TIMEOUT_S, help="seconds per subprocess")
    parser.add_argument("--repeats", type=int, default=2, help="surgeries per tool; best time kept")
    args = parser.parse_args()
    if args.child:
        return child(args.child, repeats=args.repeats)
    zoo = torchvision.models.list_models(module=torchvision.models)
    models = args.models or (QUICK if args.quick else [m for m in zoo if args.slow or m not in SLOW])
    rows = {(r["model"], r["tool"]): r for r in read_results("coverage")}
    for i, name in enumerate(models, 1):
        start = time.perf_counter()
        for row in run_model(name, repeats=args.repeats, timeout=args.timeout):
            rows[row["model"], row["tool"]] = row
        write_results("coverage", sorted(rows.values(), key=lambda r: (r["model"], r["tool"])))
        verdicts = " ".join(f"{t}={'ok' if rows[name, t].get('ok') else 'fail'}" for t in TOOLS)
        print(f"[{i}/{len(models)}] {name}: {verdicts} ({time.perf_counter() - start:.0f} s)", flush=True)
    ordered = sorted(rows.values(), key=lambda r: (r["model"], r["tool"]))
    print(write_section("coverage", markdown(ordered, plot(ordered))))


if __name__ == "__main__":
    main()
