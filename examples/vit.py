"""Slim a ViT-B/16 (random weights): half the heads and half the MLP width of every block.

    python examples/vit.py [--ratio 0.5] [--timm] [--head-dims] [--embed]

torchvision's `vit_b_16` by default (`--timm`: timm's `vit_base_patch16_224`). Prints heads,
head width and MLP width per block before → after, params / MACs before → after and the
mask-equivalence report.
"""
from __future__ import annotations

import argparse
import time

import torch
import torchvision
from rich.console import Console
from rich.table import Table
from torch import nn

import surgeon


def blocks(model: nn.Module) -> list[tuple[nn.Module, nn.Linear]]:
    """(attention layer, first MLP Linear) of every transformer block, torchvision or timm."""
    if hasattr(model, "encoder"):
        return [(b.self_attention, b.mlp[0]) for b in model.encoder.layers]
    return [(b.attn, b.mlp.fc1) for b in model.blocks]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ratio", type=float, default=0.5)
    parser.add_argument("--timm", action="store_true", help="timm's vit_base_patch16_224 instead of torchvision's")
    parser.add_argument("--head-dims", action="store_true", help="narrow every head instead of removing heads")
    parser.add_argument("--embed", action="store_true", help="also prune the embedding dim (not exact)")
    args = parser.parse_args()
    console = Console()

    torch.manual_seed(0)
    if args.timm:
        import timm

        name, model = "timm vit_base_patch16_224", timm.create_model("vit_base_patch16_224", pretrained=False)
    else:
        name, model = "torchvision vit_b_16", torchvision.models.vit_b_16(weights=None)
        # torchvision starts the classifier at zero: every output would be 0 and the check empty
        nn.init.trunc_normal_(model.heads.head.weight, std=0.02)
    model.eval()
    x = torch.randn(1, 3, 224, 224)
    start = time.perf_counter()
    slim = surgeon.slim(model, args.ratio, x, prune_head_dims=args.head_dims, prune_embed=args.embed)
    console.print(f"[bold]{name}[/]: surgery took {time.perf_counter() - start:.2f} s")

    table = Table(title="per block: before → after")
    for col in ("block", "heads", "head dim", "MLP hidden", "embed"):
        table.add_column(col, justify="right")
    for i, ((a, fa), (b, fb)) in enumerate(zip(blocks(model), blocks(slim))):
        table.add_row(str(i), f"{a.num_heads} → {b.num_heads}", f"{a.head_dim} → {b.head_dim}",
                      f"{fa.out_features} → {fb.out_features}", f"{fa.in_features} → {fb.in_features}")
    console.print(table)
    surgeon.compare(surgeon.measure(model, x, onnx=False, repeats=3), surgeon.measure(slim, x, onnx=False, repeats=3),
                    console=console)
    console.print(surgeon.verify(model, slim, x))


if __name__ == "__main__":
    main()
