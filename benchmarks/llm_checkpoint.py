"""An 8 B-parameter Llama checkpoint (Llama-3.1-8B shape, random bfloat16 weights, ~16 GB of
safetensors shards) slimmed at ratio 0.25 by `surgeon.slim_checkpoint` on a 24 GB machine: does it
stay under 4 GB of peak RSS and finish in minutes, and does the slim checkpoint load and generate?

Each step is a fresh subprocess (its peak RSS, `VmHWM`, is its own), 2 threads:

- write: the checkpoint, from the config (32 layers, hidden 4096, 32 query / 8 key-value heads of
  128, MLP 14336, vocabulary 128 256, untied head), weights N(0, 0.02) in bfloat16, norms 1,
  in shards of at most 5 GB, one tensor at a time; skipped when `--dir` already holds it;
- slim: `slim_checkpoint(src, dst, 0.25)` (L2, heads and MLP; the hidden width kept);
- slim activation: the same ranked by activations of one 64-token calibration sequence, streamed
  node by node (`--calibrate`);
- generate: `surgeon.load(dst)` (bfloat16) and 4 greedy tokens.

Usage:
    python benchmarks/llm_checkpoint.py --dir /tmp/llama8b              # ~16 GB + ~12 GB of disk
    python benchmarks/llm_checkpoint.py --dir /tmp/llama8b --layers 2   # a quick look
Rows go to benchmarks/results/llm_checkpoint.json and the "llm_checkpoint" section of docs/benchmarks.md.
"""
from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import environment, read_results, write_results, write_section  # noqa: E402
from coverage import _error, _status  # noqa: E402

NAME = "llm_checkpoint"
RATIO, TARGET_GB, SHARD_BYTES = 0.25, 4.0, 5 * 2**30
STEPS = ("write", "slim", "slim activation", "generate")


def config(layers: int):
    import transformers

    return transformers.LlamaConfig(
        vocab_size=128256, hidden_size=4096, intermediate_size=14336, num_hidden_layers=layers,
        num_attention_heads=32, num_key_value_heads=8, head_dim=128, tie_word_embeddings=False,
        max_position_embeddings=8192, rope_theta=500000.0, dtype="bfloat16", architectures=["LlamaForCausalLM"])


def write(src: Path, layers: int) -> dict:
    """The random checkpoint, written a tensor at a time into shards of at most 5 GB."""
    import transformers

    from surgeon.checkpoint.shards import INDEX, write_shard
    from surgeon.util import parameters_on_meta

    cfg = config(layers)
    with parameters_on_meta():
        model = transformers.LlamaForCausalLM(cfg)
    shapes = [(n, torch.bfloat16, tuple(p.shape)) for n, p in model.named_parameters()]
    shards, size = [[]], 0
    for entry in shapes:
        nbytes = 2 * torch.Size(entry[2]).numel()
        if shards[-1] and size + nbytes > SHARD_BYTES:
            shards.append([])
            size = 0
        shards[-1].append(entry)
        size += nbytes
    g = torch.Generator().manual_seed(0)

    def produce(name: str) -> torch.Tensor:
        shape = dict((n, s) for n, _, s in shapes)[name]
        t = torch.empty(shape, dtype=torch.bfloat16)
        return t.fill_(1.0) if "norm" in name else t.normal_(0, 0.02, generator=g)

    tmp = src.with_name(src.name + ".partial")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    weight_map, total = {}, 0
    for i, entries in enumerate(shards, 1):
        file = f"model-{i:05d}-of-{len(shards):05d}.safetensors"
        total += write_shard(tmp / file, entries, produce, {"format": "pt"})
        weight_map.update({n: file for n, _, _ in entries})
    (tmp / INDEX).write_text(json.dumps({"metadata": {"total_size": total}, "weight_map": weight_map}, indent=2))
    cfg.to_json_file(tmp / "config.json")
    tmp.rename(src)
    return {"params": sum(torch.Size(s).numel() for _, _, s in shapes), "bytes_written": total, "shards": len(shards)}


def slim(src: Path, dst: Path, calibrate: bool) -> dict:
    import surgeon

    shutil.rmtree(dst, ignore_errors=True)
    kw = {}
    if calibrate:
        ids = torch.randint(0, 128256, (1, 64), generator=torch.Generator().manual_seed(1))
        kw = {"importance": "activation", "calibration": [{"input_ids": ids}]}
    plan = surgeon.slim_checkpoint(src, dst, RATIO, progress=False, **kw)
    meta = json.loads((dst / "surgeon.json").read_text())
    written = sum(f.stat().st_size for f in dst.glob("*.safetensors"))
    slim_params = sum(torch.Size(s).numel() for _, s in meta["slim"])
    return {"bytes_read": meta["bytes_read"], "bytes_written": written, "stages": meta["seconds"],
            "params_after": slim_params, "cuts": len(plan.cuts)}


def generate(dst: Path) -> dict:
    import surgeon

    model = surgeon.load(dst)
    ids = torch.randint(0, 128256, (1, 8), generator=torch.Generator().manual_seed(2))
    start = time.perf_counter()
    with torch.no_grad():
        out = model.generate(ids, max_new_tokens=4, do_sample=False, pad_token_id=0)
    attn, mlp = model.model.layers[0].self_attn, model.model.layers[0].mlp
    return {"tokens": out.shape[1] - ids.shape[1], "generate_s": time.perf_counter() - start,
            "dtype": str(next(model.parameters()).dtype).removeprefix("torch."),
            "widths": f"q {attn.q_proj.out_features}, kv {attn.k_proj.out_features}, mlp {mlp.gate_proj.out_features}"}


def child(step: str, root: Path, layers: int) -> dict:
    torch.set_num_threads(2)
    src, dst = root / f"llama-{layers}", root / f"llama-{layers}-slim"
    start = time.perf_counter()
    try:
        if step == "write":
            found = write(src, layers) if not (src / "config.json").exists() else {"skipped": True}
        elif step == "generate":
            found = generate(dst)
        else:
            found = slim(src, dst, calibrate=step == "slim activation")
    except Exception as e:
        return {"step": step, "layers": layers, "ok": False, "error": _error(e)}
    return {"step": step, "layers": layers, "ok": True, "seconds": time.perf_counter() - start,
            "peak_gb": _status("VmHWM") / 2**30, **found}


def run(step: str, root: Path, layers: int) -> dict:
    command = [sys.executable, __file__, "--child", step, "--dir", str(root), "--layers", str(layers)]
    done = subprocess.run(command, capture_output=True, text=True)
    rows = [json.loads(line) for line in done.stdout.splitlines() if line.startswith("{")]
    why = (done.stderr.strip().splitlines() or [f"exit status {done.returncode}"])[-1][:160]
    return rows[-1] if rows else {"step": step, "layers": layers, "ok": False, "error": why}


def markdown(rows: list[dict]) -> str:
    gb = lambda b: f"{b / 1e9:.1f}"  # noqa: E731
    lines = [
        "## Out of core: an 8 B Llama checkpoint slimmed on a 24 GB machine",
        "",
        f"`python benchmarks/llm_checkpoint.py --dir DIR` — {environment()}",
        "",
        "Llama-3.1-8B shape (32 layers, hidden 4096, 32 query / 8 key-value heads of 128, MLP 14336, "
        "vocabulary 128 256, untied head), random bfloat16 weights in safetensors shards of ≤ 5 GB, "
        "2 threads, a fresh subprocess per step; peak GB = the step's peak RSS (VmHWM). "
        "`slim_checkpoint(src, dst, 0.25)` reads one tensor at a time and writes the slim shards one "
        "tensor at a time; in memory, `slim` would need the whole model (the bfloat16 weights below) "
        "plus its working copies (0.5× the model on the 1.5 B Llama above): about 24 GB for this one, all this "
        "machine has. The source shards had just been written, so most reads came from the page cache; "
        "from a cold disk, reading ~30 GB adds its time.",
        "",
    ]
    for r in rows:
        if r["step"] == "slim" and r.get("ok") and r["layers"] == 32:
            met = r["peak_gb"] < TARGET_GB
            lines.append(f"**Target** (peak RSS < {TARGET_GB:g} GB, minutes): {'met' if met else '**missed**'} — "
                         f"{r['seconds'] / 60:.1f} min, peak {r['peak_gb']:.2f} GB.")
            lines.append("")
    lines += ["| layers | step | result | s | peak GB | GB read | GB written | details |",
              "|---:|---|---|---:|---:|---:|---:|---|"]
    for r in rows:
        ok = "ok" if r.get("ok") else r["error"].replace("|", "/")
        if r["step"] == "write":
            details = "(already there)" if r.get("skipped") else f"{r.get('params', 0) / 1e9:.2f} B params, {r.get('shards')} shards"
        elif r["step"] == "generate":
            details = f"{r.get('tokens')} tokens in {r.get('generate_s', 0):.1f} s, {r.get('dtype')}, {r.get('widths')}"
        else:
            rest = r.get("seconds", 0) - sum(r.get("stages", {}).values())
            stages = ", ".join(f"{k} {v:.0f}" for k, v in [*r.get("stages", {}).items(), ("write and imports", rest)])
            details = f"{r.get('params_after', 0) / 1e9:.2f} B params after; stages (s): {stages}"
        cells = [str(r["layers"]), r["step"], ok, f"{r['seconds']:.0f}" if r.get("seconds") else "",
                 f"{r['peak_gb']:.2f}" if r.get("peak_gb") else "", gb(r["bytes_read"]) if r.get("bytes_read") else "",
                 gb(r["bytes_written"]) if r.get("bytes_written") else "", details]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dir", type=Path, required=True, help="where the checkpoints go")
    parser.add_argument("--layers", type=int, default=32)
    parser.add_argument("--steps", nargs="+", default=["write", "slim", "generate"], choices=STEPS)
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(child(args.child, args.dir, args.layers)), flush=True)
        return
    rows = {(r["step"], r["layers"]): r for r in read_results(NAME)}
    for step in args.steps:
        r = rows[step, args.layers] = run(step, args.dir, args.layers)
        print(step, json.dumps(r), flush=True)
    ordered = sorted(rows.values(), key=lambda r: (-r["layers"], STEPS.index(r["step"])))
    write_results(NAME, ordered)
    print(write_section(NAME, markdown(ordered)))


if __name__ == "__main__":
    main()
