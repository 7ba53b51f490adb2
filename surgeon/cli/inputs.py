"""Example inputs for the command line: `--input-shape 1,3,224,224` (or an image size), read
from a Hugging Face config, or inferred from the first layer."""
from __future__ import annotations

import re
from typing import Any

import torch
from torch import nn

from ..errors import InputError, TraceError
from ..util import infer_inputs

__all__ = ["parse_shape", "example_inputs", "describe"]

TEXT_LENGTH = 16


def parse_shape(text: str | None) -> tuple[int, ...] | None:
    """`"1,3,224,224"` (or `1x3x224x224`) → a shape; `"224"` → `(224,)`, an image size.

    Example:
        >>> parse_shape("1,3,64,64")
        (1, 3, 64, 64)
    """
    if text is None:
        return None
    parts = [p for p in re.split(r"[,x× ]+", text.strip()) if p]
    if not parts or not all(p.isdigit() and int(p) > 0 for p in parts):
        raise InputError(f"--input-shape '{text}' must be positive sizes separated by commas, e.g. "
                         "--input-shape 1,3,224,224, or an image size such as --input-shape 224")
    return tuple(int(p) for p in parts)


def _first_layer(model: nn.Module) -> nn.Module | None:
    kinds = (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Linear, nn.Embedding)
    return next((m for m in model.modules() if isinstance(m, kinds)), None)


def _hugging_face(model: nn.Module, shape: tuple[int, ...] | None) -> Any:
    config, name = model.config, model.main_input_name
    if name == "input_ids":
        shape = (1, shape[0]) if shape and len(shape) == 1 else shape or (1, TEXT_LENGTH)
        ids = torch.randint(0, config.vocab_size, shape)
        return {"input_ids": ids, "attention_mask": torch.ones_like(ids)}
    if name == "pixel_values":
        size = getattr(config, "image_size", 224)
        if shape is None or len(shape) == 1:
            shape = (1, getattr(config, "num_channels", 3), *((shape[0],) * 2 if shape else (size, size)))
        return torch.randn(shape)
    if shape is None:
        raise InputError(f"{type(model).__name__} takes {name}: pass its shape, e.g. --input-shape 1,80,3000")
    return {name: torch.randn(shape)}


def example_inputs(model: nn.Module, shape: tuple[int, ...] | None) -> Any:
    """What `surgeon.slim` is given: a tensor of `shape` (token ids when the first layer is an
    embedding), a dict of keyword tensors for Hugging Face text models, or an inferred image.

    Example:
        >>> example_inputs(torchvision.models.resnet18(), (64,)).shape
        torch.Size([1, 3, 64, 64])
    """
    if hasattr(model, "config") and isinstance(getattr(model, "main_input_name", None), str):
        return _hugging_face(model, shape)
    first = _first_layer(model)
    if shape is not None and len(shape) > 1:
        if isinstance(first, nn.Embedding):
            return torch.randint(0, first.num_embeddings, shape)
        return torch.randn(shape)
    try:
        return infer_inputs(model, **({"size": shape[0]} if shape else {})).args[0]
    except TraceError as e:
        kind = type(first).__name__ if first is not None else "no conv or linear layer"
        raise InputError(f"cannot guess the inputs of {type(model).__name__} (first layer: {kind}); "
                         "pass --input-shape, e.g. --input-shape 1,16") from e


def describe(inputs: Any) -> str:
    """`(1, 3, 64, 64)`, or `input_ids (1, 16), attention_mask (1, 16)` for keyword inputs."""
    if isinstance(inputs, dict):
        return ", ".join(f"{k} {tuple(v.shape)}" for k, v in inputs.items())
    return str(tuple(inputs.shape))
