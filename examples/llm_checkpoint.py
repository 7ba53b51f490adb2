"""Slim a Llama checkpoint on disk without loading it, then fine-tune the slim model — alone or
under torchrun, where calibration is shared over the ranks and fine-tuning uses FSDP2.

1. A checkpoint: `--src DIR` (a Hugging Face safetensors directory), or a small random Llama
   written to `OUT/src` (4 layers, 8 query / 2 key-value heads).
2. `surgeon.slim_checkpoint(src, OUT/slim, 0.25, importance="activation", calibration=…)`:
   the model is built on the meta device, the calibration batches run through it one weight at a
   time (each rank its share; statistics merged), every rank makes the same plan (checked), and
   rank 0 writes the slim shards.
3. Fine-tuning of the slim model on a toy next-token task (a repeating sequence) with FSDP2
   (`surgeon.distributed.shard`; DDP with `--ddp`), a few AdamW steps.
4. Rank 0 saves the fine-tuned model (`surgeon.save`) and reloads it; every rank writes
   what it saw to `OUT/rank{N}.json`.

Run:
    python examples/llm_checkpoint.py --out /tmp/llm
    torchrun --nproc_per_node=2 examples/llm_checkpoint.py --out /tmp/llm     # gloo on CPU, NCCL on GPUs
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
from pathlib import Path

import torch
import torch.distributed as dist
import transformers

import surgeon
from surgeon import distributed


def parse() -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--src", type=Path, help="checkpoint directory (default: a small random Llama)")
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--ratio", type=float, default=0.25)
    ap.add_argument("--steps", type=int, default=8)
    ap.add_argument("--ddp", action="store_true", help="DDP instead of FSDP2")
    return ap.parse_args()


def small_llama(directory: Path) -> None:
    config = transformers.LlamaConfig(vocab_size=64, hidden_size=64, intermediate_size=128, num_hidden_layers=4,
                                      num_attention_heads=8, num_key_value_heads=2, head_dim=8,
                                      tie_word_embeddings=False)
    torch.manual_seed(0)
    transformers.LlamaForCausalLM(config).save_pretrained(directory, max_shard_size="200KB")


def batches(vocab: int, count: int = 8, length: int = 32) -> list[dict[str, torch.Tensor]]:
    """Calibration / training batches: a repeating sequence at random offsets (the same on every rank)."""
    g = torch.Generator().manual_seed(1)
    pattern = torch.randperm(vocab, generator=g)[:16]
    starts = torch.randint(0, 16, (count, 2), generator=g)
    return [{"input_ids": torch.stack([pattern.roll(-int(s)).repeat(length // 16 + 1)[:length] for s in row])}
            for row in starts]


def main() -> None:
    args = parse()
    if "RANK" in os.environ:
        dist.init_process_group("nccl" if torch.cuda.is_available() else "gloo")
    rank, world = distributed.rank_and_size()
    device = torch.device("cuda", rank % torch.cuda.device_count()) if torch.cuda.is_available() else torch.device("cpu")
    src = args.src or args.out / "src"
    if args.src is None and distributed.is_main() and not src.exists():
        small_llama(src)
    distributed.barrier()
    vocab = json.loads((src / "config.json").read_text())["vocab_size"]
    data = batches(vocab)

    plan = surgeon.slim_checkpoint(src, args.out / "slim", args.ratio, importance="activation",
                                   calibration=data[:4], progress=False)
    digest = hashlib.sha256(plan.to_json().encode()).hexdigest()
    print(f"rank {rank}/{world}: {plan}", flush=True)

    model = surgeon.load(args.out / "slim").to(device).train()  # from_pretrained too where the config holds the widths
    wrapped = distributed.shard(model) if world > 1 and not args.ddp else (
        torch.nn.parallel.DistributedDataParallel(model) if world > 1 else model)
    optimizer = torch.optim.AdamW(wrapped.parameters(), lr=3e-3)
    losses = []
    for step in range(args.steps):
        ids = data[(step * world + rank) % len(data)]["input_ids"].to(device)
        loss = wrapped(input_ids=ids, labels=ids, use_cache=False).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        losses.append(float(loss))
    state = distributed.full_state_dict(wrapped)
    reloaded_equal = None
    if distributed.is_main():
        fresh = surgeon.load(args.out / "slim")
        fresh.load_state_dict(state)
        surgeon.save(fresh, args.out / "finetuned", overwrite=True)
        again = surgeon.load(args.out / "finetuned")
        reloaded_equal = all(torch.equal(a, b) for a, b in zip(again.state_dict().values(), fresh.state_dict().values()))
    summary = {"rank": rank, "world": world, "plan_sha256": digest, "removed": sum(len(c.remove) for c in plan.cuts),
               "losses": losses, "reloaded_equal": reloaded_equal, "fsdp": world > 1 and not args.ddp}
    (args.out / f"rank{rank}.json").write_text(json.dumps(summary, indent=1))
    print(f"rank {rank}: loss {losses[0]:.3f} -> {losses[-1]:.3f}", flush=True)
    distributed.barrier()
    if dist.is_initialized():
        dist.destroy_process_group()


if __name__ == "__main__":
    main()
