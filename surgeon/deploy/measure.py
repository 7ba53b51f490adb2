"""What a model costs: parameters, MACs, bytes on disk and latency in PyTorch and onnxruntime.

MACs come from `torch.utils.flop_counter.FlopCounterMode` (MACs = FLOPs / 2; it counts
convolutions, matrix products and attention, not elementwise ops). Latency is the median of
repeated runs after a warm-up, with PyTorch and onnxruntime pinned to the same thread count.

Example:
    >>> import torch, torchvision, surgeon
    >>> x = torch.randn(1, 3, 224, 224)
    >>> model = torchvision.models.resnet50(weights=None)
    >>> before = surgeon.measure(model, x)
    >>> after = surgeon.measure(surgeon.slim(model, 0.5, x), x)
    >>> surgeon.compare(before, after)  # prints a before → after table with keep ratios
"""
from __future__ import annotations

import contextlib
import io
import statistics
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import torch
from rich.console import Console
from rich.filesize import decimal
from rich.table import Table
from torch import nn

from ..errors import SurgeonError
from ..util import count_macs, count_params, eval_mode
from .export import ExampleInputs, positional_tensors, export_onnx, onnx_session

__all__ = ["Measurement", "compare", "count_macs", "count_params", "measure", "pinned_threads"]


@dataclass(frozen=True)
class Measurement:
    """Costs of one model on one input shape.

    Attributes:
        params: number of parameters (shared parameters counted once).
        macs: multiply-accumulates of one forward pass on the example inputs.
        size_bytes: bytes of the serialised `state_dict` (what `torch.save` writes).
        torch_ms: median PyTorch latency in milliseconds.
        onnx_ms: median onnxruntime (CPU) latency in milliseconds; None when not measured.
        threads: intra-op threads both runtimes were pinned to.
    """

    params: int
    macs: int
    size_bytes: int
    torch_ms: float
    onnx_ms: float | None
    threads: int

    def __repr__(self) -> str:
        onnx = "not measured" if self.onnx_ms is None else f"{self.onnx_ms:.2f} ms"
        return (
            f"Measurement(params={_count(self.params)}, macs={_count(self.macs)}, "
            f"size={decimal(self.size_bytes)}, torch={self.torch_ms:.2f} ms, onnx={onnx}, "
            f"threads={self.threads})"
        )


@contextlib.contextmanager
def pinned_threads(threads: int) -> Iterator[int]:
    """Run PyTorch with `threads` intra-op threads, restoring the previous count afterwards.

    Example:
        >>> with pinned_threads(1):
        ...     model(x)
    """
    if threads < 1:
        raise SurgeonError(f"threads={threads} must be at least 1; pass e.g. threads=1")
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        yield threads
    finally:
        torch.set_num_threads(previous)


def measure(
    model: nn.Module,
    example_inputs: ExampleInputs,
    *,
    onnx: bool = True,
    repeats: int = 30,
    warmup: int = 5,
    threads: int = 1,
) -> Measurement:
    """Count parameters and MACs, size the state_dict, and time PyTorch and onnxruntime.

    Args:
        model: the model to measure; its train/eval modes are restored afterwards.
        example_inputs: a tensor or a tuple of tensors (latency is for this batch size).
        onnx: also export to a temporary ONNX file (checked by `export_onnx`) and time it
            in onnxruntime's CPUExecutionProvider; needs `pip install 'surgeon[onnx]'`.
        repeats: timed runs per runtime; the median is reported.
        warmup: untimed runs before timing.
        threads: intra-op threads for both runtimes (1 keeps runs comparable on busy machines).

    Returns:
        A `Measurement`.

    Example:
        >>> m = measure(torchvision.models.resnet18(weights=None), torch.randn(1, 3, 224, 224))
        >>> m.macs  # 1.81 G
        1814073344
    """
    if repeats < 1 or warmup < 0:
        raise SurgeonError(f"repeats={repeats} must be >= 1 and warmup={warmup} >= 0")
    inputs = positional_tensors(example_inputs)
    buffer = io.BytesIO()
    torch.save(model.state_dict(), buffer)
    with pinned_threads(threads), eval_mode(model), torch.inference_mode():
        torch_ms = _median_ms(lambda: model(*inputs), repeats=repeats, warmup=warmup)
    onnx_ms = _onnx_ms(model, inputs, repeats=repeats, warmup=warmup, threads=threads) if onnx else None
    return Measurement(
        params=count_params(model),
        macs=count_macs(model, inputs),
        size_bytes=buffer.getbuffer().nbytes,
        torch_ms=torch_ms,
        onnx_ms=onnx_ms,
        threads=threads,
    )


def compare(before: Measurement, after: Measurement, *, console: Console | None = None) -> Table:
    """Print a before → after table with keep ratios (after / before) and return it.

    Example:
        >>> table = compare(measure(model, x), measure(slim, x))
    """
    table = Table(title="surgeon.compare", title_justify="left")
    for column in ("", "before", "after", "keep"):
        table.add_column(column, justify="left" if not column else "right")
    rows = [
        ("params", before.params, after.params, _count),
        ("MACs", before.macs, after.macs, _count),
        ("size", before.size_bytes, after.size_bytes, decimal),
        ("PyTorch latency", before.torch_ms, after.torch_ms, _ms),
        ("ONNX Runtime latency", before.onnx_ms, after.onnx_ms, _ms),
    ]
    for name, old, new, fmt in rows:
        if old is not None and new is not None:
            table.add_row(name, fmt(old), fmt(new), f"{new / old:.3f}" if old else "—")
    (console or Console()).print(table)
    return table


def _onnx_ms(
    model: nn.Module, inputs: tuple[torch.Tensor, ...], *, repeats: int, warmup: int, threads: int
) -> float:
    """Median onnxruntime latency of the model exported with a fixed input shape."""
    with tempfile.TemporaryDirectory(prefix="surgeon-measure-") as folder:
        result = export_onnx(model, Path(folder) / "model.onnx", inputs, dynamic_batch=False)
        session = onnx_session(result.path, threads=threads)
    feed = {arg.name: x.detach().cpu().numpy() for arg, x in zip(session.get_inputs(), inputs)}
    return _median_ms(lambda: session.run(None, feed), repeats=repeats, warmup=warmup)


def _median_ms(run: Callable[[], object], *, repeats: int, warmup: int) -> float:
    """Median wall time of `run()` in milliseconds after `warmup` untimed calls."""
    for _ in range(warmup):
        run()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        run()
        times.append(time.perf_counter() - start)
    return statistics.median(times) * 1e3


def _count(n: float) -> str:
    """12_345_678 → '12.35 M'."""
    for unit, scale in (("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if abs(n) >= scale:
            return f"{n / scale:.2f} {unit}"
    return str(n)


def _ms(ms: float) -> str:
    return f"{ms:.2f} ms"
