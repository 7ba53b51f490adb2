"""Command line: `surgeon analyze|slim MODEL` for torchvision / timm models (random weights).

    surgeon analyze resnet50
    surgeon slim resnet50 --ratio 0.5 --onnx out/resnet50_slim.onnx
    surgeon slim timm:vit_small_patch16_224 --ratio 0.5
"""
from __future__ import annotations

import argparse
import time

import torch
from torch import nn

from .api import analyze, slim
from .errors import SurgeonError
from .core.verify import verify

__all__ = ["main", "build"]


def build(spec: str) -> nn.Module:
    """`name` (torchvision) or `timm:name`, with random weights (nothing is downloaded)."""
    source, _, name = spec.rpartition(":")
    if source == "timm":
        import timm

        return timm.create_model(name, pretrained=False)
    if source not in ("", "torchvision"):
        raise SurgeonError(f"unknown model source '{source}': use a torchvision name or timm:NAME")
    import torchvision

    try:
        return torchvision.models.get_model(name, weights=None)
    except ValueError as e:
        raise SurgeonError(f"torchvision has no model '{name}'") from e


def main(argv: list[str] | None = None) -> None:
    """Entry point of the `surgeon` command."""
    parser = argparse.ArgumentParser(prog="surgeon", description=__doc__.splitlines()[0])
    parser.add_argument("command", choices=("analyze", "slim"))
    parser.add_argument("model", help="torchvision model name, or timm:NAME")
    parser.add_argument("--ratio", type=float, default=0.5)
    parser.add_argument("--round-to", type=int, default=1)
    parser.add_argument("--size", type=int, default=224, help="input image size")
    parser.add_argument("--onnx", default="", help="export the slim model to this ONNX file")
    args = parser.parse_args(argv)
    try:
        _run(args)
    except SurgeonError as e:
        raise SystemExit(f"surgeon: {e}") from e


def _run(args: argparse.Namespace) -> None:
    model = build(args.model).eval()
    x = torch.randn(1, 3, args.size, args.size)
    if args.command == "analyze":
        analyze(model, x, ratio=args.ratio, round_to=args.round_to)
        return
    start = time.perf_counter()
    small = slim(model, args.ratio, x, round_to=args.round_to)
    print(f"surgery took {time.perf_counter() - start:.2f} s")
    print(verify(model, small))
    from .deploy.measure import compare, measure

    compare(measure(model, x, onnx=False, repeats=3), measure(small, x, onnx=False, repeats=3))
    if args.onnx:
        from .deploy.export import export_onnx

        print(export_onnx(small, args.onnx, x))


if __name__ == "__main__":
    main()
