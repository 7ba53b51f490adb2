"""Iterative pruning with fine-tuning inside a DDP job, on the digits CNN.

Every rank starts from a different random initialisation (DDP makes them equal), trains on its
shard of the data, and runs :func:`surgeon.schedule.iterative`: rank 0 decides the masks or
channels, all ranks apply them, DDP is rebuilt after each structured step. At the end the ranks
compare what they hold, and rank 0 alone writes ``summary.json`` and ``model.pt``.

Run:
    torchrun --nproc_per_node=2 examples/ddp_finetune.py --kind structured --out /tmp/ddp
    torchrun --nproc_per_node=2 examples/ddp_finetune.py --kind unstructured --target 0.8
"""

from __future__ import annotations

import argparse
import gc
import hashlib
import json
from pathlib import Path

import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel

import digits
from surgeon import distributed, masks, schedule


def fingerprint(model: torch.nn.Module) -> dict:
    """Architecture (parameter shapes) and a hash of the parameters, buffers and masks."""
    state = distributed.unwrap(model).state_dict()
    digest = hashlib.sha256()
    for name, tensor in sorted(state.items()):
        digest.update(name.encode())
        digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return dict(shapes={name: list(t.shape) for name, t in state.items()},
                sha256=digest.hexdigest(), sparsity=masks.report(model).sparsity)


def parse() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--kind", choices=("structured", "unstructured"), default="structured")
    parser.add_argument("--target", type=float, default=0.5)
    parser.add_argument("--step", type=float, default=0.3)
    parser.add_argument("--epochs", type=int, default=5, help="dense training epochs")
    parser.add_argument("--step-epochs", type=int, default=1, help="fine-tuning per step")
    parser.add_argument("--out", type=Path, default=Path("ddp_out"))
    return parser.parse_args()


def main() -> None:
    args = parse()
    torch.set_num_threads(1)
    dist.init_process_group("nccl" if torch.cuda.is_available() else "gloo")
    rank, world = dist.get_rank(), dist.get_world_size()
    data = digits.load(0)
    model = DistributedDataParallel(digits.cnn(seed=rank))
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    digits.fit(model, data, opt, args.epochs, rank=rank, world=world)
    result = schedule.iterative(
        model, args.target, args.step, kind=args.kind, optimizer=opt,
        example_inputs=digits.EXAMPLE, evaluate=lambda m: digits.accuracy(m, data),
        finetune=lambda m, o: digits.fit(m, data, o, args.step_epochs, seed=1, rank=rank,
                                         world=world))
    prints = [None] * world
    dist.all_gather_object(prints, fingerprint(result.model))
    if distributed.is_main():
        args.out.mkdir(parents=True, exist_ok=True)
        summary = dict(world=world, kind=args.kind, ranks=prints,
                       is_ddp=isinstance(result.model, DistributedDataParallel),
                       history=[vars(step) for step in result.history.steps])
        (args.out / "summary.json").write_text(json.dumps(summary, indent=1))
    distributed.save(distributed.unwrap(result.model).state_dict(), args.out / "model.pt")
    del model, result, opt  # DDP reducers go before their process group (gloo aborts otherwise)
    gc.collect()
    dist.barrier()
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
