"""ONNX export, checked against PyTorch by running the file in onnxruntime.

Uses the torch.export-based exporter (`torch.onnx.export(..., dynamo=True)`), the default since
torch 2.9; the TorchScript exporter is deprecated. onnx, onnxscript and onnxruntime are an
optional extra, imported only when a function here is called.

Example:
    >>> import torch, torchvision, surgeon
    >>> model = torchvision.models.resnet18(weights=None)
    >>> surgeon.export_onnx(model, "resnet18.onnx", torch.randn(1, 3, 224, 224))
    OnnxResult(path='resnet18.onnx', size=46.8 MB, max_error=4.1e-07, opset=20, batches=(1, 2))
"""
from __future__ import annotations

import importlib
import os
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any, Union

import torch
from rich.filesize import decimal
from torch import nn
from torch.utils._pytree import tree_leaves

from ..errors import SurgeonError
from ..util import as_inputs, eval_mode, relative_error

__all__ = [
    "ExampleInputs",
    "MissingExtraError",
    "OnnxExportError",
    "OnnxMismatchError",
    "OnnxResult",
    "TOLERANCE",
    "MIN_OPSET",
    "export_onnx",
    "onnx_session",
    "positional_tensors",
    "require",
]

ExampleInputs = Union[torch.Tensor, Sequence[torch.Tensor]]
TOLERANCE = 1e-4
"""Largest relative error between onnxruntime and PyTorch that `export_onnx` accepts."""
MIN_OPSET = 18
"""Lowest opset the torch.export-based exporter writes without a lossy version conversion."""
_SINGLE_FILE_BYTES = 1_800_000_000  # protobuf caps one file at 2 GiB; larger weights go beside it


class MissingExtraError(SurgeonError, ImportError):
    """An optional dependency (onnx, onnxscript, onnxruntime) is not installed."""


class OnnxExportError(SurgeonError):
    """torch.onnx.export could not export the model."""


class OnnxMismatchError(SurgeonError):
    """The exported file computes something else than the PyTorch model."""


@dataclass(frozen=True)
class OnnxResult:
    """What `export_onnx` wrote and how closely onnxruntime reproduces PyTorch.

    Attributes:
        path: the .onnx file (weights over ~1.8 GB go to a `.data` file next to it).
        size_bytes: bytes on disk, external weight files included.
        max_error: largest relative error over all outputs and checked batch sizes.
        opset: the default-domain opset written into the file.
        batch_sizes: batch sizes run through onnxruntime (two when the batch axis is dynamic).
    """

    path: Path
    size_bytes: int
    max_error: float
    opset: int
    batch_sizes: tuple[int, ...]

    def __repr__(self) -> str:
        return (
            f"OnnxResult(path={str(self.path)!r}, size={decimal(self.size_bytes)}, "
            f"max_error={self.max_error:.1e}, opset={self.opset}, batches={self.batch_sizes})"
        )


def require(name: str) -> ModuleType:
    """Import an optional dependency, or raise `MissingExtraError` saying how to install it.

    Example:
        >>> ort = require("onnxruntime")
    """
    try:
        return importlib.import_module(name)
    except ImportError as e:
        raise MissingExtraError(
            f"{name!r} is not installed; ONNX export and measurement need the onnx extra: "
            "pip install 'surgeon[onnx]'"
        ) from e


def onnx_session(path: str | os.PathLike, *, threads: int | None = None) -> Any:
    """Open an onnxruntime CPU session, optionally pinned to `threads` intra-op threads.

    Example:
        >>> session = onnx_session("resnet18.onnx", threads=1)
    """
    ort = require("onnxruntime")
    options = ort.SessionOptions()
    if threads is not None:
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
    return ort.InferenceSession(os.fspath(path), options, providers=["CPUExecutionProvider"])


def export_onnx(
    model: nn.Module,
    path: str | os.PathLike,
    example_inputs: ExampleInputs,
    *,
    dynamic_batch: bool = True,
    opset: int | None = None,
) -> OnnxResult:
    """Export `model` to ONNX and check the file in onnxruntime against PyTorch.

    The model runs in eval mode (each submodule's mode is restored afterwards). With a dynamic
    batch axis the graph is traced with at least two samples, so that batch size 1 is not baked
    in, and the file is checked at the example's batch size and one more.

    Args:
        model: the model to export; left unchanged.
        path: where to write the .onnx file (parent folders are created).
        example_inputs: a tensor or a tuple of tensors, dim 0 being the batch.
        dynamic_batch: make dim 0 of every input and output symbolic.
        opset: ONNX opset (>= 18); None takes the exporter's default.

    Returns:
        An `OnnxResult` with the path, size on disk, largest relative error and opset.

    Raises:
        MissingExtraError: onnx, onnxscript or onnxruntime is missing.
        OnnxExportError: torch.onnx.export failed (the cause is chained).
        OnnxMismatchError: onnxruntime's outputs differ by more than `TOLERANCE` (relative).

    Example:
        >>> result = export_onnx(model, "slim.onnx", torch.randn(1, 3, 224, 224))
        >>> result.max_error < 1e-4
        True
    """
    if opset is not None and opset < MIN_OPSET:
        raise SurgeonError(
            f"opset={opset} is below {MIN_OPSET}, the lowest opset the torch.export-based ONNX "
            f"exporter writes reliably; pass opset={MIN_OPSET} or higher, or opset=None"
        )
    for extra in ("onnx", "onnxscript", "onnxruntime"):
        require(extra)
    inputs = positional_tensors(example_inputs)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    batch = inputs[0].shape[0] if inputs[0].dim() else 1
    batch_sizes = (batch, batch + 1) if dynamic_batch else (batch,)
    with eval_mode(model), torch.no_grad():
        _export(model, _with_batch(inputs, max(batch, 2)) if dynamic_batch else inputs, path,
                dynamic_batch=dynamic_batch, opset=opset)
        session = onnx_session(path)
        errors = {b: _check(session, model, _with_batch(inputs, b)) for b in batch_sizes}
    worst = max(errors, key=errors.get)
    if errors[worst] > TOLERANCE:
        raise OnnxMismatchError(
            f"{path}: onnxruntime differs from PyTorch by relative error {errors[worst]:.2e} "
            f"(> {TOLERANCE:.0e}) at batch size {worst}; an op is exported with other semantics "
            f"— try another opset= or dynamic_batch=False, and inspect the file with onnxruntime"
        )
    size, file_opset = _describe(path)
    return OnnxResult(path, size, errors[worst], file_opset, batch_sizes)


def _export(
    model: nn.Module, inputs: tuple[torch.Tensor, ...], path: Path, *, dynamic_batch: bool,
    opset: int | None,
) -> None:
    """Run the torch.export-based exporter, wrapping its failures in `OnnxExportError`."""
    dynamic_shapes = None
    if dynamic_batch:
        batch = torch.export.Dim("batch")
        dynamic_shapes = tuple({0: batch} for _ in inputs)
    weight_bytes = sum(t.numel() * t.element_size() for t in model.state_dict().values())
    try:
        with warnings.catch_warnings():  # every input's dim 0 is the same "batch" on purpose
            warnings.filterwarnings("ignore", message=".*The axis name: batch will not be used")
            torch.onnx.export(
                model, inputs, path, dynamo=True, verbose=False, opset_version=opset,
                dynamic_shapes=dynamic_shapes, external_data=weight_bytes > _SINGLE_FILE_BYTES,
            )
    except Exception as e:
        raise OnnxExportError(
            f"torch.onnx.export failed for {type(model).__name__} on inputs of shapes "
            f"{[tuple(x.shape) for x in inputs]}: {e}; if the failure is about the batch axis, "
            "retry with dynamic_batch=False"
        ) from e


def positional_tensors(example_inputs: object) -> tuple[torch.Tensor, ...]:
    """The example inputs as a tuple of positional tensors (what the exported graph takes)."""
    inputs = as_inputs(example_inputs)
    if inputs.kwargs:
        raise SurgeonError("export_onnx takes positional tensor inputs; pass a tuple of tensors "
                           f"in forward's order instead of keyword arguments ({list(inputs.kwargs)})")
    return inputs.args


def _with_batch(inputs: tuple[torch.Tensor, ...], size: int) -> tuple[torch.Tensor, ...]:
    """The inputs with dim 0 cycled to `size` samples (any dtype; no new random values)."""
    return tuple(x[torch.arange(size) % x.shape[0]] if x.dim() else x for x in inputs)


def _check(session: Any, model: nn.Module, inputs: tuple[torch.Tensor, ...]) -> float:
    """Largest relative error between the session's outputs and the model's."""
    expected = [t for t in tree_leaves(model(*inputs)) if isinstance(t, torch.Tensor)]
    feed = {arg.name: x.detach().cpu().numpy() for arg, x in zip(session.get_inputs(), inputs)}
    actual = session.run(None, feed)
    if len(actual) != len(expected):
        raise OnnxMismatchError(
            f"the ONNX file returns {len(actual)} outputs but the model returns {len(expected)} "
            "tensors; return a tensor or a flat tuple of tensors from forward"
        )
    return max(relative_error(torch.from_numpy(a), e) for a, e in zip(actual, expected))


def _describe(path: Path) -> tuple[int, int]:
    """Bytes on disk (external weight files included) and default-domain opset of a file."""
    onnx = require("onnx")
    proto = onnx.load(os.fspath(path), load_external_data=False)
    locations = {
        entry.value
        for tensor in proto.graph.initializer
        for entry in tensor.external_data
        if entry.key == "location"
    }
    size = path.stat().st_size + sum((path.parent / name).stat().st_size for name in locations)
    opset = max(o.version for o in proto.opset_import if o.domain in ("", "ai.onnx"))
    return size, opset
