"""`surgeon checkpoint SRC --ratio R --out DST`: slim a Hugging Face checkpoint without loading it."""
from __future__ import annotations

import argparse
import json
import time

from rich.console import Console

from ..checkpoint import slim_checkpoint
from ..checkpoint.model import build
from ..checkpoint.shards import Checkpoint
from ..errors import InputError
from .args import config, goal, show_progress, with_ignore
from .data import calibration

__all__ = ["run_checkpoint"]


def _count(shapes: list) -> int:
    total = 0
    for _, shape in shapes:
        n = 1
        for s in shape:
            n *= s
        total += n
    return total


def _size(n: int) -> str:
    return f"{n / 1e9:.2f} GB" if n >= 1e9 else f"{n / 1e6:.1f} MB"


def run_checkpoint(args: argparse.Namespace, console: Console) -> int:
    """Run `surgeon checkpoint`: the slim checkpoint in `--out`, a summary on stdout."""
    cfg = config(args)
    if args.out.exists():
        raise InputError(f"--out {args.out} exists: choose a new directory (a checkpoint is never overwritten)")
    if args.ignore:
        cfg = with_ignore(cfg, build(Checkpoint(args.model))[0], args.ignore)
    start = time.perf_counter()
    slim_checkpoint(args.model, args.out, cfg, calibration=calibration(args), progress=show_progress(args))
    seconds = time.perf_counter() - start
    meta = json.loads((args.out / "surgeon.json").read_text())
    before, after = _count(meta["original"]), _count(meta["slim"])
    written = sum(f.stat().st_size for f in args.out.glob("*.safetensors"))
    console.print(f"{args.model} → {args.out} at {goal(cfg)}, out of core in {seconds:.1f} s")
    console.print(f"params {before / 1e6:,.2f} M → {after / 1e6:,.2f} M (keep {after / max(before, 1):.3f}); "
                  f"read {_size(meta['bytes_read'])}, wrote {_size(written)}")
    console.print(f"load it with surgeon.load({str(args.out)!r}), or from_pretrained where config.json holds "
                  "the slim widths (a note above says when it cannot)")
    return 0
