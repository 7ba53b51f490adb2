"""Transformers: do the largest torchvision ViT and Swin slim in < 30 s and < 2× the model's size
in extra memory, and how does Torch-Pruning 1.6.1 fare on the same models?

`surgeon.slim(model, 0.5, x, inplace=True)` (x = 1×3×224×224, weights=None, one thread) and
Torch-Pruning set up as in coverage.py, each in its own subprocess so the peak RSS is that run's
alone. Torch-Pruning gets a wall-clock limit; every child gets an address-space limit
(RLIMIT_AS) so neither tool can exhaust the shared machine. Extra memory is the rise of the
peak RSS during the call, compared with the model's parameter + buffer bytes. Attention heads
are summed over the innermost modules with a `num_heads` / `n_heads` attribute (torchvision's
EncoderBlock and its MultiheadAttention are one attention layer, counted once).

Named large_transformers.py, not transformers.py: scripts run with benchmarks/ first on sys.path,
where a transformers.py would shadow Hugging Face `transformers` for anything that imports it.

Usage:
    python benchmarks/large_transformers.py              # vit_h_14 and swin_v2_b (~2.5 min, 2 cores)
    python benchmarks/large_transformers.py --models swin_v2_b --tp-timeout 60
Rows are merged into benchmarks/results/large_transformers.json (keyed by model and tool) and the
"large_transformers" section of docs/benchmarks.md is rewritten from all of them.
"""
from __future__ import annotations

import argparse
import json
import resource
import signal
import subprocess
import sys
from pathlib import Path

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import environment, read_results, write_results, write_section  # noqa: E402
from coverage import _build, _error, _prune_once, _warm_up  # noqa: E402

from surgeon.deploy.measure import count_params  # noqa: E402

NAME = "large_transformers"  # results json and docs section
MODELS = ("vit_h_14", "swin_v2_b")
TOOLS = ("surgeon", "torch-pruning")
TARGET_S = 30.0
TARGET_MEMORY = 2.0  # extra peak RSS / model bytes
SURGEON_TIMEOUT_S = 300  # 10× the target: a backstop, not a measurement
TP_TIMEOUT_S = 120
MEMORY_LIMIT_GB = 14.0  # address space per child (importing torch alone maps ~3.5 GB)
STARTUP_S = 600  # subprocess backstop on top of the surgery limit: build, warm-up, checks
_OOM = ("can't allocate memory", "not enough memory", "out of memory", "bad_alloc")


def _heads_of(m: nn.Module) -> int | None:
    n = getattr(m, "num_heads", getattr(m, "n_heads", None))
    return n if isinstance(n, int) else None


def heads(model: nn.Module) -> int:
    """Attention heads summed over the innermost modules that have `num_heads` or `n_heads`."""
    attention = [m for m in model.modules() if _heads_of(m) is not None]
    inner = [m for m in attention if not any(_heads_of(c) is not None for c in list(m.modules())[1:])]
    return sum(_heads_of(m) for m in inner)


def model_mb(model: nn.Module) -> float:
    """Parameter + buffer bytes in MiB."""
    tensors = [*model.parameters(), *model.buffers()]
    return sum(t.numel() * t.element_size() for t in tensors) / 2**20


def child(name: str, tool: str, *, timeout: int, memory_gb: float) -> dict:
    """One surgery on a freshly built model, under an address-space limit; one result row."""
    limit = int(memory_gb * 2**30)
    resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
    torch.set_num_threads(1)
    x = torch.randn(1, 3, 224, 224)
    with torch.device("meta"):  # counts without allocating a second copy of the weights
        reference = _build(name)
    row = {"model": name, "tool": tool, "model_mb": model_mb(reference),
           "params_before": count_params(reference), "heads_before": heads(reference)}
    del reference
    _warm_up()
    try:
        model, seconds, extra_mb = _prune_once(tool, name, x, timeout=timeout)
        with torch.no_grad():
            shape = tuple(model(x).shape)
        if shape != (1, 1000):
            raise RuntimeError(f"output shape {shape}, expected (1, 1000)")
    except TimeoutError:
        return {**row, "ok": False, "error": f"timed out after {timeout} s"}
    except (MemoryError, RuntimeError) as e:
        oom = isinstance(e, MemoryError) or any(s in str(e) for s in _OOM)
        return {**row, "ok": False, "error": _oom(memory_gb) if oom else _error(e)}
    except Exception as e:
        return {**row, "ok": False, "error": _error(e)}
    return {**row, "ok": True, "seconds": seconds, "extra_mb": extra_mb,
            "ratio": extra_mb / row["model_mb"] if extra_mb is not None else None,
            "params_after": count_params(model), "heads_after": heads(model)}


def run(name: str, tool: str, *, tp_timeout: int, memory_gb: float) -> dict:
    """`child` in a fresh subprocess; a crash or a hang becomes a failed row saying why."""
    command = [sys.executable, __file__, "--child", name, tool,
               "--tp-timeout", str(tp_timeout), "--memory-gb", str(memory_gb)]
    backstop = _timeout(tool, tp_timeout) + STARTUP_S
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=backstop)
    except subprocess.TimeoutExpired:
        return {"model": name, "tool": tool, "ok": False,
                "error": f"timed out after {backstop} s (whole subprocess)"}
    rows = [json.loads(line) for line in done.stdout.splitlines() if line.startswith("{")]
    if rows:
        return rows[-1]
    stderr = done.stderr.strip()
    if any(s in stderr for s in (*_OOM, "MemoryError")):
        why = _oom(memory_gb)
    elif done.returncode < 0:
        why = f"killed by {signal.Signals(-done.returncode).name}"
    else:
        why = (stderr.splitlines() or [f"exit status {done.returncode}"])[-1][:160]
    return {"model": name, "tool": tool, "ok": False, "error": why}


def _oom(memory_gb: float) -> str:
    return f"out of memory ({memory_gb:g} GiB address-space limit)"


def _timeout(tool: str, tp_timeout: int) -> int:
    return tp_timeout if tool == "torch-pruning" else SURGEON_TIMEOUT_S


def _cells(r: dict) -> list[str]:
    def num(key: str, fmt: str) -> str:
        return "" if r.get(key) is None else format(r[key], fmt)

    params = [f"{r[k] / 1e6:.1f} M" if r.get(k) else "—" for k in ("params_before", "params_after")]
    heads = [str(r.get(k, "—")) for k in ("heads_before", "heads_after")]
    result = "ok" if r.get("ok") else r["error"].replace("|", "/")
    return [result, num("seconds", ".1f"), num("extra_mb", ".0f"), num("model_mb", ".0f"),
            num("ratio", ".2f"), " → ".join(params), " → ".join(heads)]


def _verdict(r: dict | None) -> str:
    if not r or not r.get("ok"):
        return f"**missed** — {r['error'] if r else 'not run'}"
    if r["ratio"] is None:
        return f"not measurable — {r['seconds']:.1f} s, no peak RSS on this system"
    met = r["seconds"] < TARGET_S and r["ratio"] < TARGET_MEMORY
    return (f"{'met' if met else '**missed**'} — {r['seconds']:.1f} s, extra RAM {r['ratio']:.2f}× "
            f"the model's size ({r['extra_mb']:.0f} / {r['model_mb']:.0f} MB)")


def markdown(rows: list[dict], *, timeout: int, memory_gb: float) -> str:
    by = {(r["model"], r["tool"]): r for r in rows}
    models = list(dict.fromkeys(r["model"] for r in rows))
    lines = [
        "## Transformers: surgery time and memory on the largest ViT and Swin",
        "",
        f"`python benchmarks/large_transformers.py` — {environment()}",
        "",
        "Ratio 0.5, L2 magnitude, input 1×3×224×224, 1 thread, weights=None, one surgery per "
        f"fresh subprocess (address space limited to {memory_gb:g} GiB). surgeon runs "
        "`slim(model, 0.5, x, inplace=True)`; Torch-Pruning runs `MetaPruner` set up as in the "
        f"coverage section, stopped after {timeout} s. Extra MB = rise of the peak RSS during the "
        "call; model MB = parameter + buffer bytes. Heads are summed over attention modules.",
        "",
        f"**Targets** (surgeon: < {TARGET_S:.0f} s and extra RAM < {TARGET_MEMORY:g}× the "
        "model's size):",
        "",
        *[f"- {m}: {_verdict(by.get((m, 'surgeon')))}" for m in models],
        "",
        "| model | tool | result | s | extra MB | model MB | extra / model | params | heads |",
        "|---|---|---|---:|---:|---:|---:|---|---|",
    ]
    for m in models:
        for tool in TOOLS:
            if (m, tool) in by:
                lines.append("| " + " | ".join([m, tool, *_cells(by[m, tool])]) + " |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=list(MODELS), help="torchvision model names")
    parser.add_argument("--tp-timeout", type=int, default=TP_TIMEOUT_S,
                        help="seconds Torch-Pruning may take")
    parser.add_argument("--memory-gb", type=float, default=MEMORY_LIMIT_GB,
                        help="address-space limit (GiB) of each subprocess")
    parser.add_argument("--child", nargs=2, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        name, tool = args.child
        row = child(name, tool, timeout=_timeout(tool, args.tp_timeout), memory_gb=args.memory_gb)
        print(json.dumps(row), flush=True)
        return
    rows = {(r["model"], r["tool"]): r for r in read_results(NAME)}
    for name in args.models:
        for tool in TOOLS:
            r = rows[name, tool] = run(name, tool, tp_timeout=args.tp_timeout, memory_gb=args.memory_gb)
            print(f"{name} {tool}: " + (f"{r['seconds']:.1f} s, {r['extra_mb'] or 0:.0f} MB extra"
                                        if r.get("ok") else r["error"]), flush=True)
    ordered = sorted(rows.values(), key=lambda r: (r["model"], TOOLS.index(r["tool"])))
    write_results(NAME, ordered)
    text = markdown(ordered, timeout=args.tp_timeout, memory_gb=args.memory_gb)
    print(write_section(NAME, text))


if __name__ == "__main__":
    main()
