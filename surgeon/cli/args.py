"""The command line's arguments and what they become: the parser and a `Config`."""
from __future__ import annotations

import argparse
import dataclasses
import fnmatch
import sys
from pathlib import Path
from typing import NoReturn

from torch import nn

from ..config import DATA_IMPORTANCES, IMPORTANCES, Config
from ..errors import InputError

SPEC_HELP = ("torchvision:NAME (or a bare torchvision name), timm:NAME, hf:DIR, "
             "module:package.module:factory, or a directory written by surgeon.save")

__all__ = ["parser", "config", "goal", "with_ignore", "show_progress", "SPEC_HELP"]


class _Parser(argparse.ArgumentParser):
    """Usage mistakes in one line (exit code 2), pointing to --help."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message}; see {self.prog} --help\n")


def _ratio(text: str) -> float:
    """`0.5` or `50%`."""
    try:
        return float(text[:-1]) / 100 if text.endswith("%") else float(text)
    except ValueError as e:
        raise argparse.ArgumentTypeError(f"must be a number in [0, 1), e.g. 0.5 or 50%, got '{text}'") from e


def _target(text: str) -> float:
    """`0.5`, `50%` (a fraction to keep) or a count such as `2e9`."""
    try:
        return float(text[:-1]) / 100 if text.endswith("%") else float(text)
    except ValueError as e:
        raise argparse.ArgumentTypeError(f"must be a fraction to keep (0.5, 50%) or a count (2e9), got '{text}'") from e


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("model", metavar="SPEC", help=SPEC_HELP)
    p.add_argument("--weights", type=Path, metavar="FILE",
                   help="state_dict to load: .safetensors, or a file written by torch.save")
    p.add_argument("--input-shape", metavar="SHAPE",
                   help="example input shape, e.g. 1,3,224,224, or an image size such as 224")
    p.add_argument("--quiet", "-q", action="store_true", help="print nothing but errors")
    p.add_argument("--debug", action="store_true", help="show tracebacks")


def _surgery(p: argparse.ArgumentParser, *, ratio: float | None) -> None:
    p.set_defaults(default_ratio=ratio)
    p.add_argument("--ratio", type=_ratio, default=None,
                   help="fraction of every coupled group's channels (or heads) removed, in [0, 1)"
                   + (f" (default {ratio})" if ratio is not None else "; or give a target"))
    p.add_argument("--target-macs", type=_target, metavar="F",
                   help="instead of --ratio: the MACs to keep, a fraction (0.5, 50%%) or a count; "
                   "units compete across groups")
    p.add_argument("--target-params", type=_target, metavar="F",
                   help="instead of --ratio: the parameters to keep, a fraction or a count")
    p.add_argument("--max-ratio", type=_ratio, default=0.9, metavar="R",
                   help="with a target, no group loses more than this fraction (default 0.9)")
    p.add_argument("--round-to", type=int, default=1, metavar="N", help="keep widths multiples of N")
    p.add_argument("--ignore", action="append", default=[], metavar="PATTERN",
                   help="keep the output channels of modules matching this name pattern "
                   "(e.g. 'layer4.*'); repeatable")
    p.add_argument("--no-heads", action="store_true", help="keep every attention head")


def _data(p: argparse.ArgumentParser, *, importances: tuple[str, ...] = IMPORTANCES, compensate: bool = True) -> None:
    p.add_argument("--importance", choices=importances, default="l2",
                   help="how units are ranked: by their weights (l2, the default; l1; random) or on "
                   f"--calibration data ({', '.join(i for i in importances if i in DATA_IMPORTANCES)})")
    p.add_argument("--calibration", type=Path, metavar="FILE",
                   help="calibration samples (.safetensors or torch.save): a tensor, a dict of input "
                   "tensors, or a list of batches")
    p.add_argument("--batch-size", type=int, default=32, metavar="N",
                   help="calibration samples per batch (default 32)")
    if compensate:
        p.add_argument("--compensate", action="store_true",
                       help="replace each removed channel by its calibration mean in the next layer's bias")


def parser() -> argparse.ArgumentParser:
    """The `surgeon` argument parser: `slim`, `analyze`, `checkpoint`, `bench`."""
    main = _Parser(prog="surgeon", description="Structured pruning that proves itself: slim a model, "
                   "see what is coupled to what, measure before and after.")
    commands = main.add_subparsers(dest="command", required=True, metavar="{slim,analyze,checkpoint,bench}",
                                   parser_class=_Parser)
    slim = commands.add_parser("slim", help="slim a model and write it, its ONNX file and a report")
    _common(slim)
    _surgery(slim, ratio=None)
    _data(slim)
    slim.add_argument("--out", type=Path, required=True, metavar="DIR",
                      help="directory to write (surgeon.save format, model.onnx, report.json, report.md)")
    slim.add_argument("--overwrite", action="store_true", help="replace DIR if it exists")
    slim.add_argument("--no-onnx", action="store_true", help="do not write model.onnx")
    slim.add_argument("--repeats", type=int, default=10, metavar="N", help="timed runs per latency (default 10)")
    analyze = commands.add_parser("analyze", help="print the coupled groups; draw them")
    _common(analyze)
    _surgery(analyze, ratio=0.5)
    _data(analyze)
    analyze.add_argument("--graph", type=Path, action="append", default=[], metavar="FILE",
                         help="draw the dependency graph: .svg/.png/.pdf (Graphviz dot) or .dot; repeatable")
    analyze.add_argument("--scope", metavar="PREFIX", help="draw only modules under PREFIX (e.g. layer2)")
    analyze.add_argument("--plot", type=Path, metavar="FILE", help="plot widths before → after (.png)")
    ckpt = commands.add_parser("checkpoint", help="slim a Hugging Face checkpoint directory without loading it")
    ckpt.add_argument("model", metavar="SRC", help="a Hugging Face checkpoint directory (config.json + safetensors)")
    _surgery(ckpt, ratio=None)
    _data(ckpt, importances=("l2", "l1", "random", "activation", "fluctuation"), compensate=False)
    ckpt.add_argument("--out", type=Path, required=True, metavar="DIR", help="the slim checkpoint (must not exist)")
    ckpt.add_argument("--quiet", "-q", action="store_true", help="print nothing but errors")
    ckpt.add_argument("--debug", action="store_true", help="show tracebacks")
    bench = commands.add_parser("bench", help="params, MACs and latency before → after")
    _common(bench)
    _surgery(bench, ratio=0.5)
    _data(bench)
    bench.add_argument("--repeats", type=int, default=30, metavar="N", help="timed runs per latency (default 30)")
    bench.add_argument("--threads", type=int, default=1, metavar="N", help="intra-op threads (default 1)")
    bench.add_argument("--onnx", action="store_true", help="also time onnxruntime")
    return main


def config(args: argparse.Namespace) -> Config:
    """The surgery options, checked before any model is built (`--ignore` is added later)."""
    targets = {"target_macs": args.target_macs, "target_params": args.target_params}
    ratio = args.ratio
    if ratio is not None and any(v is not None for v in targets.values()):
        raise InputError("give --ratio or a target (--target-macs / --target-params), not both")
    if ratio is None and not any(v is not None for v in targets.values()):
        if args.default_ratio is None:
            raise InputError("give --ratio R (e.g. 0.5), --target-macs F or --target-params F (e.g. 0.5)")
        ratio = args.default_ratio
    importance, compensate = args.importance, getattr(args, "compensate", False)
    if args.calibration is None and (importance in DATA_IMPORTANCES or compensate):
        what = f"--importance {importance} ranks units on data" if importance in DATA_IMPORTANCES else \
            "--compensate moves removed channels' calibration means into biases"
        raise InputError(f"{what}: pass --calibration FILE (samples as a .safetensors or torch.save file)")
    return Config(ratio, **targets, max_ratio=args.max_ratio, round_to=args.round_to, prune_heads=not args.no_heads,
                  importance=importance, compensate=compensate)


def goal(cfg: Config) -> str:
    """What was asked, in words: 'ratio 0.5', 'target MACs 0.5', 'target params 2000000'."""
    if cfg.target_macs is not None:
        return f"target MACs {cfg.target_macs:g}"
    if cfg.target_params is not None:
        return f"target params {cfg.target_params:g}"
    return f"ratio {cfg.ratio}"


def with_ignore(cfg: Config, model: nn.Module, patterns: list[str]) -> Config:
    """`cfg` ignoring every module whose name matches one of `patterns`."""
    names = [n for n, _ in model.named_modules() if n]
    ignored = []
    for pattern in patterns:
        found = [n for n in names if fnmatch.fnmatchcase(n, pattern)]
        if not found:
            example = next((n for n in names if "." in n), names[0] if names else "fc")
            raise InputError(f"--ignore '{pattern}' matches no module of {type(model).__name__}; "
                             f"names look like '{example}' (surgeon analyze lists the groups)")
        ignored += found
    return dataclasses.replace(cfg, ignore=tuple(ignored)) if ignored else cfg


def show_progress(args: argparse.Namespace) -> bool:
    """Progress lines only on a terminal, and never with --quiet."""
    return not args.quiet and sys.stdout.isatty() and sys.stderr.isatty()
