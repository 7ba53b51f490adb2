"""Slim a torchvision ResNet-50 by half, prove it exact, measure it, export it to ONNX.

    python examples/resnet.py [--ratio 0.5] [--onnx out/resnet50_slim.onnx] [--no-latency]

Random weights (weights=None): nothing is downloaded. Prints params / MACs / latency before →
after, the mask-equivalence report and the time the surgery took.
"""
from __future__ import annotations

import argparse
import time

import torch
import torchvision
from rich.console import Console

import surgeon


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="resnet50", help="torchvision classification model name")
    parser.add_argument("--ratio", type=float, default=0.5, help="fraction of each group's channels removed")
    parser.add_argument("--round-to", type=int, default=1, help="keep widths multiples of this")
    parser.add_argument("--onnx", default="out/resnet50_slim.onnx", help="where to write the ONNX file ('' to skip)")
    parser.add_argument("--no-latency", action="store_true", help="count params/MACs only")
    args = parser.parse_args()
    console = Console()

    torch.manual_seed(0)
    model = getattr(torchvision.models, args.model)(weights=None).eval()
    x = torch.randn(1, 3, 224, 224)

    start = time.perf_counter()
    slim = surgeon.slim(model, args.ratio, round_to=args.round_to)
    took = time.perf_counter() - start
    console.print(f"[bold]{args.model}[/]: surgery took {took:.2f} s (ratio {args.ratio}, round_to {args.round_to})")

    report = surgeon.verify(model, slim, x)
    console.print(report)

    latency = not args.no_latency
    before = surgeon.measure(model, x, onnx=latency, repeats=10 if latency else 1, warmup=2)
    after = surgeon.measure(slim, x, onnx=latency, repeats=10 if latency else 1, warmup=2)
    surgeon.compare(before, after, console=console)

    if args.onnx:
        result = surgeon.export_onnx(slim, args.onnx, x)
        console.print(result)
    if not report.ok:
        raise SystemExit("verification failed")


if __name__ == "__main__":
    main()
