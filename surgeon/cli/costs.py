"""What the commands measure and export: costs before and after (keyword inputs included), and
the ONNX file, skipped with a reason where it cannot be written."""
from __future__ import annotations

from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..deploy.export import MissingExtraError, OnnxExportError, OnnxMismatchError, export_onnx
from ..deploy.measure import Measurement, measure

__all__ = ["costs", "write_onnx"]


class _Keywords(nn.Module):
    """`model(**dict(zip(names, tensors)))` called positionally, for what takes only tensors."""

    def __init__(self, model: nn.Module, names: list[str]) -> None:
        super().__init__()
        self.model, self.names = model, names

    def forward(self, *tensors: torch.Tensor) -> Any:
        return self.model(**dict(zip(self.names, tensors, strict=True)))


def costs(model: nn.Module, inputs: Any, *, repeats: int, threads: int = 1, onnx: bool = False) -> dict[str, Any]:
    """Params, MACs, state_dict bytes and median latency (`Measurement` fields) as a dict.

    Example:
        >>> costs(torchvision.models.resnet18(), torch.randn(1, 3, 64, 64), repeats=3)["macs"]
        148563968
    """
    if isinstance(inputs, dict):
        model, inputs = _Keywords(model, list(inputs)), tuple(inputs.values())
        onnx = False
    m: Measurement = measure(model, inputs, onnx=onnx, repeats=repeats, warmup=min(3, repeats), threads=threads)
    return asdict(m)


def write_onnx(model: nn.Module, path: Path, inputs: Any) -> dict[str, Any]:
    """Export to `path`, checked in onnxruntime: the result as a dict, or `{"skipped": why}`."""
    if isinstance(inputs, dict):
        return {"skipped": f"the model takes keyword inputs ({', '.join(inputs)}); export it with "
                           "surgeon.export_onnx and positional tensors"}
    try:
        result = export_onnx(model, path, inputs)
    except (MissingExtraError, OnnxExportError, OnnxMismatchError) as e:
        path.unlink(missing_ok=True)
        return {"skipped": " ".join(str(e).split())[:300]}
    return {"path": path.name, "size_bytes": result.size_bytes, "max_error": result.max_error,
            "opset": result.opset, "batch_sizes": list(result.batch_sizes)}
