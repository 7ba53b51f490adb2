"""Slim a ViT-B/16 (timm, random weights): half the heads and half the MLP width of every block.

    python examples/vit.py [--ratio 0.5] [--head-dims] [--embed]

Prints heads and MLP width per block before → after, params / MACs before → after and the
mask-equivalence report. (torchvision's `vit_b_16` uses nn.MultiheadAttention, whose heads cannot
leave while the embedding width stays: `surgeon.analyze` says so; see docs/models.md.)
"""
from __future__ import annotations

import argparse
import time

import timm
import torch
from rich.console import Console
from rich.table import Table

import surgeon


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ratio", type=float, default=0.5)
    parser.add_argument("--head-dims", action="store_true", help="narrow every head instead of removing heads")
    parser.add_argument("--embed", action="store_true", help="also prune the embedding dim (not exact)")
    args = parser.parse_args()
    console = Console()

    torch.manual_seed(0)
    model = timm.create_model("vit_base_patch16_224", pretrained=False).eval()
    x = torch.randn(1, 3, 224, 224)
    start = time.perf_counter()
    slim = surgeon.slim(model, args.ratio, x, prune_head_dims=args.head_dims, prune_embed=args.embed)
    console.print(f"[bold]vit_base_patch16_224[/]: surgery took {time.perf_counter() - start:.2f} s")

    table = Table(title="per block: before → after")
    for col in ("block", "heads", "head dim", "MLP hidden", "embed"):
        table.add_column(col, justify="right")
    for i, (a, b) in enumerate(zip(model.blocks, slim.blocks)):
        table.add_row(str(i), f"{a.attn.num_heads} → {b.attn.num_heads}", f"{a.attn.head_dim} → {b.attn.head_dim}",
                      f"{a.mlp.fc1.out_features} → {b.mlp.fc1.out_features}",
                      f"{a.norm1.normalized_shape[0]} → {b.norm1.normalized_shape[0]}")
    console.print(table)
    surgeon.compare(surgeon.measure(model, x, onnx=False, repeats=3), surgeon.measure(slim, x, onnx=False, repeats=3),
                    console=console)
    console.print(surgeon.verify(model, slim, x))


if __name__ == "__main__":
    main()
