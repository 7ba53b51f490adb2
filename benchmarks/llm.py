"""A 1.5 B-parameter Llama (Llama-3.2-1B shape, random bfloat16 weights): does it slim at ratio
0.25 in < 60 s with < 1× its size in extra RAM, and how does Torch-Pruning's LLM recipe fare?

The model is built from a config (16 layers, hidden 2048, 32 query / 8 key-value heads of 64,
MLP 8192, vocabulary 128 256, tied embeddings), weights drawn N(0, 0.02) in bfloat16; nothing is
downloaded. Each run is a fresh subprocess (peak RSS is that run's alone), 2 threads:

- surgeon: `slim(model, 0.25, {"input_ids": ids}, inplace=True)` — heads and MLP, hidden width
  kept (the default), with the trace / propagate / rank / plan / rebuild / check split;
- surgeon +embed: the same with `prune_embed=True` (heads, MLP and hidden width: the shape of
  Torch-Pruning's recipe);
- torch-pruning: its `examples/LLMs/prune_llm.py` set-up — `BasePruner`, group L2 magnitude
  (mean), `round_to=4`, heads kept whole (`prune_head_dims=False`), `num_heads` per projection,
  `lm_head` ignored — stopped after `--tp-timeout` seconds.

Usage:
    python benchmarks/llm.py                       # ~3 min for surgeon, plus the TP timeout
    python benchmarks/llm.py --tools surgeon --layers 4
Rows go to benchmarks/results/llm.json and the "llm" section of docs/benchmarks.md.
"""
from __future__ import annotations

import argparse
import gc
import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import environment, read_results, write_results, write_section  # noqa: E402
from coverage import _error, _reset_peak_rss, _status  # noqa: E402

NAME = "llm"
TOOLS = ("surgeon", "surgeon +embed", "torch-pruning")
RATIO = 0.25
TARGET_S, TARGET_MEMORY = 60.0, 1.0
TP_TIMEOUT_S = 600


def build(layers: int):
    """The Llama-3.2-1B-shaped model, random bfloat16 weights, eval mode."""
    import transformers

    config = transformers.LlamaConfig(
        vocab_size=128256, hidden_size=2048, intermediate_size=8192, num_hidden_layers=layers,
        num_attention_heads=32, num_key_value_heads=8, head_dim=64, tie_word_embeddings=True,
        max_position_embeddings=2048)
    with torch.device("meta"):
        model = transformers.LlamaForCausalLM(config)
    model = model.to_empty(device="cpu").to(torch.bfloat16)
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0, 0.02, generator=g)
    model.model.rotary_emb.__init__(config)  # to_empty left the rotary buffers unset
    return model.eval()


def _surgeon(model, ids, *, embed: bool):
    import surgeon

    slim = surgeon.slim(model, RATIO, {"input_ids": ids}, inplace=True, prune_embed=embed, progress=False)
    return slim, {k: round(v, 2) for k, v in slim.surgeon_timings.items()}


def _torch_pruning(model, ids):
    import torch_pruning as tp

    num_heads = {}
    for name, m in model.named_modules():
        if name.endswith("self_attn"):
            num_heads[m.q_proj] = model.config.num_attention_heads
            num_heads[m.k_proj] = num_heads[m.v_proj] = model.config.num_key_value_heads
    pruner = tp.pruner.BasePruner(
        model, example_inputs=ids, importance=tp.importance.GroupMagnitudeImportance(p=2, group_reduction="mean"),
        global_pruning=False, output_transform=lambda x: x.logits, pruning_ratio=RATIO,
        ignored_layers=[model.lm_head], num_heads=num_heads, prune_num_heads=True, prune_head_dims=False,
        head_pruning_ratio=RATIO, round_to=4)
    for group in pruner.step(interactive=True):
        group.prune()
    return model, {}


def child(tool: str, *, layers: int, timeout: int) -> dict:
    torch.set_num_threads(2)
    model = build(layers)
    bytes_ = sum(t.numel() * t.element_size() for t in [*model.parameters(), *model.buffers()])
    row = {"tool": tool, "layers": layers, "params_before": sum(p.numel() for p in model.parameters()),
           "model_mb": bytes_ / 2**20}
    ids = torch.randint(0, 1000, (1, 8), generator=torch.Generator().manual_seed(1))
    gc.collect()
    _reset_peak_rss()
    base = _status("VmRSS")

    def time_out(signum: int, frame: object) -> None:
        raise TimeoutError(f"stopped after {timeout} s")

    signal.signal(signal.SIGALRM, time_out)
    signal.alarm(timeout)
    start = time.perf_counter()
    try:
        model, split = (_torch_pruning(model, ids) if tool == "torch-pruning"
                        else _surgeon(model, ids, embed=tool.endswith("embed")))
    except Exception as e:
        return {**row, "ok": False, "error": _error(e)}
    finally:
        signal.alarm(0)
    seconds = time.perf_counter() - start
    extra = (_status("VmHWM") - base) / 2**20
    with torch.no_grad():
        shape = tuple(model(input_ids=ids, use_cache=False).logits.shape)
    attn, mlp = model.model.layers[0].self_attn, model.model.layers[0].mlp
    return {**row, "ok": shape == (1, 8, 128256), "seconds": seconds, "split": split, "extra_mb": extra,
            "ratio": extra / row["model_mb"], "params_after": sum(p.numel() for p in model.parameters()),
            "widths": f"q {attn.q_proj.out_features}, kv {attn.k_proj.out_features}, "
                      f"mlp {mlp.gate_proj.out_features}, hidden {model.lm_head.in_features}"}


def run(tool: str, *, layers: int, timeout: int) -> dict:
    command = [sys.executable, __file__, "--child", tool, "--layers", str(layers), "--tp-timeout", str(timeout)]
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=timeout + 900)
    except subprocess.TimeoutExpired:
        return {"tool": tool, "layers": layers, "ok": False, "error": "the subprocess did not finish"}
    rows = [json.loads(line) for line in done.stdout.splitlines() if line.startswith("{")]
    why = (done.stderr.strip().splitlines() or [f"exit status {done.returncode}"])[-1][:160]
    return rows[-1] if rows else {"tool": tool, "layers": layers, "ok": False, "error": why}


def markdown(rows: list[dict], *, timeout: int) -> str:
    lines = [
        "## LLM: a 1.5 B-parameter Llama (bfloat16) at ratio 0.25",
        "",
        f"`python benchmarks/llm.py` — {environment()}",
        "",
        "Llama-3.2-1B shape built from its config (16 layers, hidden 2048, 32 query / 8 key-value heads, "
        "MLP 8192, vocabulary 128 256, tied embeddings), random N(0, 0.02) bfloat16 weights, 8 input "
        "tokens, 2 threads, a fresh subprocess per run. surgeon: `slim(model, 0.25, {'input_ids': ids}, "
        "inplace=True)` (the default keeps the hidden width; `+embed` adds `prune_embed=True`); "
        "Torch-Pruning: its LLM recipe (`BasePruner`, group L2 magnitude, `round_to=4`, heads kept whole), "
        f"stopped after {timeout} s. Extra MB = rise of the peak RSS during the call.",
        "",
        f"**Target** (surgeon: < {TARGET_S:.0f} s, extra RAM < {TARGET_MEMORY:g}× the model, faster than "
        "Torch-Pruning):",
        "",
    ]
    for r in rows:
        if r["tool"] == "surgeon" and r.get("ok"):
            met = r["seconds"] < TARGET_S and r["ratio"] < TARGET_MEMORY
            lines.append(f"- {'met' if met else '**missed**'} — {r['seconds']:.1f} s, extra RAM "
                         f"{r['ratio']:.2f}× ({r['extra_mb']:.0f} / {r['model_mb']:.0f} MB); stages (s): "
                         + ", ".join(f"{k} {v}" for k, v in r["split"].items()))
    lines += ["", "| tool | layers | result | s | extra MB | model MB | extra / model | params | widths (layer 0) |",
              "|---|---:|---|---:|---:|---:|---:|---|---|"]
    for r in rows:
        ok = "ok" if r.get("ok") else r["error"].replace("|", "/")
        params = f"{r['params_before'] / 1e9:.2f} B → {r['params_after'] / 1e9:.2f} B" if r.get("params_after") else "—"
        cells = [r["tool"], str(r["layers"]), ok, f"{r['seconds']:.1f}" if r.get("seconds") else "",
                 f"{r['extra_mb']:.0f}" if r.get("extra_mb") else "", f"{r.get('model_mb', 0):.0f}",
                 f"{r['ratio']:.2f}" if r.get("ratio") else "", params, r.get("widths", "")]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tools", nargs="+", default=list(TOOLS), choices=TOOLS)
    parser.add_argument("--layers", type=int, default=16)
    parser.add_argument("--tp-timeout", type=int, default=TP_TIMEOUT_S)
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(child(args.child, layers=args.layers, timeout=args.tp_timeout)), flush=True)
        return
    rows = {(r["tool"], r["layers"]): r for r in read_results(NAME)}
    for tool in args.tools:
        r = rows[tool, args.layers] = run(tool, layers=args.layers, timeout=args.tp_timeout)
        print(tool, json.dumps(r), flush=True)
    ordered = sorted(rows.values(), key=lambda r: (-r["layers"], TOOLS.index(r["tool"])))
    write_results(NAME, ordered)
    print(write_section(NAME, markdown(ordered, timeout=args.tp_timeout)))


if __name__ == "__main__":
    main()
