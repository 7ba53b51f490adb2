"""The `surgeon` command: slim a model from the shell, see what is coupled to what, measure.

    surgeon slim resnet50 --ratio 0.5 --out resnet50-slim
    surgeon slim hf:./my-bert --weights finetuned.safetensors --ratio 0.3 --out bert-slim
    surgeon analyze timm:vit_small_patch16_224 --graph graph.svg --plot widths.png
    surgeon bench resnet50-slim
    surgeon checkpoint ./Llama-3.1-8B --ratio 0.25 --out llama-slim

Errors are one line and exit code 2 (1 when verification fails or something unexpected
breaks); `--debug` shows tracebacks. See docs/cli.md.
"""
from __future__ import annotations

import shlex
import sys
import warnings
from collections.abc import Callable

from rich.console import Console

from ..errors import SurgeonError
from .analyze import run_analyze
from .args import parser
from .bench import run_bench
from .checkpoint import run_checkpoint
from .slim import run_slim

__all__ = ["main"]

COMMANDS: dict[str, Callable[..., int]] = {"slim": run_slim, "analyze": run_analyze, "checkpoint": run_checkpoint,
                                           "bench": run_bench}


def _one_line(e: BaseException) -> str:
    return " ".join(str(e).split()) or type(e).__name__


def main(argv: list[str] | None = None) -> int:
    """Run the `surgeon` command on `argv` (default: `sys.argv[1:]`); return the exit code.

    Example:
        >>> main(["analyze", "resnet18", "--input-shape", "64"])
        0
    """
    argv = sys.argv[1:] if argv is None else argv
    args = parser().parse_args(argv)
    args.command_line = shlex.join(["surgeon", *argv])
    console = Console(quiet=args.quiet, soft_wrap=True, markup=False)  # paths may hold [brackets]
    with warnings.catch_warnings(record=not args.debug) as caught:
        warnings.simplefilter("default" if args.debug else "always")
        try:
            code = COMMANDS[args.command](args, console)
        except SurgeonError as e:
            if args.debug:
                raise
            print(f"surgeon {args.command}: error: {_one_line(e)}", file=sys.stderr)
            return 2
        except Exception as e:  # a bug: say so in one line, the traceback is one flag away
            if args.debug:
                raise
            print(f"surgeon {args.command}: unexpected {type(e).__name__}: {_one_line(e)} (rerun with "
                  "--debug for the traceback, and please report it)", file=sys.stderr)
            return 1
    notes = dict.fromkeys(str(w.message) for w in caught or () if issubclass(w.category, UserWarning))
    for message in (m for m in notes if "surgeon.save(" not in m):  # what the command writes anyway
        console.print(f"note: {' '.join(message.split())}", style="yellow")
    return code
