"""measure / compare: MACs from FlopCounterMode, sizes, latency, threads and modes restored."""
from __future__ import annotations

import io

import pytest
import torch
from rich.console import Console
from torch import nn

from surgeon.errors import SurgeonError
from surgeon.deploy.measure import Measurement, compare, count_macs, count_params, measure, pinned_threads


def _cnn(width: int) -> nn.Sequential:
    """Three 3×3 convs (padding 1) of `width` channels on a 3-channel 16×16 input."""
    return nn.Sequential(
        nn.Conv2d(3, width, 3, padding=1), nn.BatchNorm2d(width), nn.ReLU(),
        nn.Conv2d(width, width, 3, padding=1), nn.ReLU(),
        nn.Conv2d(width, width, 3, padding=1),
    )


def _conv_macs(width: int, pixels: int = 16 * 16) -> int:
    return (3 * width + 2 * width * width) * 9 * pixels


X = torch.randn(1, 3, 16, 16)


def test_conv_macs_match_the_formula_and_halving_channels_quarters_them():
    wide, narrow = count_macs(_cnn(32), X), count_macs(_cnn(16), X)
    assert wide == _conv_macs(32)
    assert narrow == _conv_macs(16)
    assert 0.25 < narrow / wide < 0.27  # the 3-channel first conv only halves


def test_macs_scale_with_batch_and_count_linear_layers():
    assert count_macs(nn.Linear(3, 2), torch.randn(4, 3)) == 4 * 3 * 2


def test_shared_parameters_are_counted_once():
    shared = nn.Linear(4, 4)
    assert count_params(nn.Sequential(shared, shared)) == 20


def test_measure_without_onnx_restores_threads_and_modes():
    model = _cnn(8).train()
    model[1].eval()
    with pinned_threads(2):
        m = measure(model, X, onnx=False, repeats=3, warmup=1)
        assert torch.get_num_threads() == 2
    assert model.training and not model[1].training
    assert m.params == count_params(model) and m.macs == _conv_macs(8)
    assert m.onnx_ms is None and m.torch_ms > 0 and m.threads == 1
    assert 4 * m.params < m.size_bytes < 4 * m.params + 20_000  # float32 weights + pickle overhead
    assert "not measured" in repr(m)


def test_measure_with_onnxruntime():
    pytest.importorskip("onnxruntime")
    m = measure(_cnn(8), X, repeats=3, warmup=1)
    assert m.onnx_ms is not None and m.onnx_ms > 0
    assert "ms" in repr(m) and "not measured" not in repr(m)


@pytest.mark.parametrize("options", [{"threads": 0}, {"repeats": 0}, {"warmup": -1}])
def test_bad_options_are_named(options):
    with pytest.raises(SurgeonError, match=next(iter(options))):
        measure(_cnn(4), X, onnx=False, **options)


def test_compare_prints_keep_ratios_and_skips_missing_latency():
    before = Measurement(params=1000, macs=4000, size_bytes=4000, torch_ms=2.0, onnx_ms=1.0, threads=1)
    after = Measurement(params=250, macs=1000, size_bytes=1000, torch_ms=1.0, onnx_ms=None, threads=1)
    out = io.StringIO()
    table = compare(before, after, console=Console(file=out, width=120))
    assert table.row_count == 4
    text = out.getvalue()
    assert "0.250" in text and "0.500" in text
    assert "ONNX Runtime" not in text
