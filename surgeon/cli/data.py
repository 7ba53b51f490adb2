"""Calibration data for the command line: `--calibration FILE` read into the batches that
`surgeon.slim(calibration=…)` takes.

A `.safetensors` file, or a `.pt` / `.pth` file (read with `weights_only=True`) holding:
- one tensor: samples along dim 0, cut into batches of `--batch-size`;
- a dict of tensors: the model's keyword inputs (`input_ids`, `attention_mask` …), cut alike —
  except `inputs` (with `targets`, for a gradient criterion's loss), which are positional;
- (`.pt` only) a list of batches, used as they are.
"""
from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

import torch

from ..errors import InputError

__all__ = ["load_batches", "calibration"]


def _read(path: Path) -> Any:
    if not path.is_file():
        raise InputError(f"--calibration {path}: no such file")
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            return load_file(path)
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 — any unreadable file gets the same one-line answer
        raise InputError(f"cannot read --calibration {path} ({type(e).__name__}: {str(e).strip().split('. ')[0][:100]}); "
                         "give a .safetensors or torch.save file of tensors") from e


def _cut(n: int, size: int, what: str) -> list[slice]:
    if n == 0:
        raise InputError(f"--calibration holds no samples ({what} has 0 rows)")
    return [slice(i, i + size) for i in range(0, n, size)]


def _split(data: dict[str, torch.Tensor], size: int) -> list[Any]:
    """Batches of a dict of equally long tensors (keyword inputs, or `inputs` / `targets`)."""
    lengths = {k: v.shape[0] if isinstance(v, torch.Tensor) and v.dim() else None for k, v in data.items()}
    if None in lengths.values() or len(set(lengths.values())) != 1:
        raise InputError("--calibration: every tensor must hold the same number of samples along dim 0, got "
                         + ", ".join(f"{k} {tuple(v.shape) if isinstance(v, torch.Tensor) else type(v).__name__}"
                                     for k, v in data.items()))
    rows = _cut(next(iter(lengths.values())), size, next(iter(data)))
    if "inputs" in data:
        extra = set(data) - {"inputs", "targets"}
        if extra:
            raise InputError(f"--calibration: 'inputs' goes with 'targets' only, not with {sorted(extra)}")
        return [(data["inputs"][r], data["targets"][r]) if "targets" in data else data["inputs"][r] for r in rows]
    return [{k: v[r] for k, v in data.items()} for r in rows]


def load_batches(path: Path, batch_size: int) -> list[Any]:
    """The calibration batches in `path` (see the module docstring)."""
    if batch_size < 1:
        raise InputError(f"--batch-size must be at least 1, got {batch_size}")
    data = _read(path)
    if isinstance(data, torch.Tensor):
        return [data[r] for r in _cut(data.shape[0] if data.dim() else 0, batch_size, "the tensor")]
    if isinstance(data, dict) and data:
        return _split(data, batch_size)
    if isinstance(data, (list, tuple)) and data:
        return list(data)
    raise InputError(f"--calibration {path} holds {type(data).__name__}: give a tensor of samples, a dict of "
                     "input tensors, or a list of batches")


def calibration(args: argparse.Namespace) -> list[Any] | None:
    """The batches of `--calibration`, or None without it."""
    return None if args.calibration is None else load_batches(args.calibration, args.batch_size)
