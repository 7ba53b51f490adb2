"""export_onnx: file written, checked by onnxruntime, dynamic batch axis, clear errors."""
from __future__ import annotations

import importlib

import pytest
import torch
import torchvision
from torch import nn
from torchvision.models import VisionTransformer

import surgeon
from surgeon.errors import SurgeonError
from surgeon.layers import SlimMultiheadAttention
from surgeon.deploy.export import (
    TOLERANCE,
    MissingExtraError,
    OnnxMismatchError,
    export_onnx,
    onnx_session,
)
from surgeon.util import relative_error

pytest.importorskip("onnxruntime")
pytest.importorskip("onnxscript")


def _tiny_vit() -> VisionTransformer:
    vit = VisionTransformer(
        image_size=32, patch_size=8, num_layers=2, num_heads=2, hidden_dim=64, mlp_dim=128
    )
    nn.init.normal_(vit.heads.head.weight)  # torchvision zero-inits the head: outputs would all be 0
    return vit


def _runs_at(path, shape: tuple[int, ...], model: nn.Module) -> float:
    """Relative error of the ONNX file against the model on a fresh input of `shape`."""
    x = torch.randn(shape)
    session = onnx_session(path)
    (out,) = session.run(None, {session.get_inputs()[0].name: x.numpy()})
    with torch.no_grad():
        return relative_error(torch.from_numpy(out), model.eval()(x))


@pytest.fixture(scope="module")
def resnet18_export(tmp_path_factory):
    model = torchvision.models.resnet18(weights=None)
    path = tmp_path_factory.mktemp("onnx") / "resnet18.onnx"
    return model, export_onnx(model, path, torch.randn(1, 3, 64, 64))


def test_resnet18_export_is_checked_and_described(resnet18_export):
    model, result = resnet18_export
    assert result.path.is_file()
    assert result.size_bytes == result.path.stat().st_size
    assert result.size_bytes > 4 * sum(p.numel() for p in model.parameters())
    assert 0 <= result.max_error < TOLERANCE
    assert result.opset >= 18
    assert result.batch_sizes == (1, 2)
    assert "resnet18.onnx" in repr(result) and "MB" in repr(result)


def test_dynamic_batch_axis_runs_other_batch_sizes(resnet18_export):
    model, result = resnet18_export
    assert onnx_session(result.path).get_inputs()[0].shape[0] == "batch"
    for batch in (1, 5):
        assert _runs_at(result.path, (batch, 3, 64, 64), model) < TOLERANCE


def test_fixed_batch_keeps_the_example_shape(tmp_path):
    model = torchvision.models.mobilenet_v2(weights=None)
    result = export_onnx(model, tmp_path / "m.onnx", torch.randn(3, 3, 64, 64), dynamic_batch=False)
    assert result.batch_sizes == (3,)
    assert onnx_session(result.path).get_inputs()[0].shape == [3, 3, 64, 64]


def test_vit_exports_with_dynamic_batch_from_a_single_sample(tmp_path):
    vit = _tiny_vit()
    result = export_onnx(vit, tmp_path / "vit.onnx", torch.randn(1, 3, 32, 32))
    assert result.max_error < TOLERANCE
    assert _runs_at(result.path, (4, 3, 32, 32), vit) < TOLERANCE


def test_train_mode_is_restored_per_module(tmp_path):
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.Dropout(0.5))
    model[1].eval()
    export_onnx(model, tmp_path / "s.onnx", torch.randn(2, 3, 8, 8))
    assert [m.training for m in model] == [True, False, True]
    assert model.training


def test_several_inputs_share_the_batch_axis(tmp_path):
    class Pair(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.a, self.b = nn.Linear(4, 3), nn.Linear(5, 3)

        def forward(self, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
            return self.a(x) + self.b(y), self.a(x)

    result = export_onnx(Pair(), tmp_path / "pair.onnx", (torch.randn(2, 4), torch.randn(2, 5)))
    assert result.batch_sizes == (2, 3)
    assert len(onnx_session(result.path).get_outputs()) == 2


def test_mismatch_raises_and_names_the_error(tmp_path):
    class Noisy(nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return x + torch.rand_like(x)  # onnxruntime draws other random numbers

    with pytest.raises(OnnxMismatchError, match="relative error") as info:
        export_onnx(Noisy(), tmp_path / "noisy.onnx", torch.zeros(2, 8))
    assert isinstance(info.value, SurgeonError)


def test_low_opset_is_refused_with_advice(tmp_path):
    with pytest.raises(SurgeonError, match="opset=17.*opset=18"):
        export_onnx(nn.Linear(2, 2), tmp_path / "l.onnx", torch.randn(1, 2), opset=17)


def test_explicit_opset_is_written(tmp_path):
    result = export_onnx(nn.Linear(2, 2), tmp_path / "l.onnx", torch.randn(1, 2), opset=18)
    assert result.opset == 18


def test_bad_example_inputs_are_named(tmp_path):
    with pytest.raises(SurgeonError, match="example_inputs.*list"):
        export_onnx(nn.Linear(2, 2), tmp_path / "l.onnx", ([1.0, 2.0],))


def test_missing_onnxruntime_says_how_to_install(tmp_path, monkeypatch):
    real_import = importlib.import_module

    def without_onnxruntime(name: str, *args, **kwargs):
        if name == "onnxruntime":
            raise ImportError("No module named 'onnxruntime'")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(importlib, "import_module", without_onnxruntime)
    with pytest.raises(MissingExtraError, match=r"pip install 'surgeon\[onnx\]'"):
        export_onnx(nn.Linear(2, 2), tmp_path / "l.onnx", torch.randn(1, 2))


def test_slimmed_resnet18_exports_and_runs_two_batch_sizes(tmp_path):
    x = torch.randn(1, 3, 64, 64)
    slim = surgeon.slim(torchvision.models.resnet18(weights=None), 0.5, x)
    result = export_onnx(slim, tmp_path / "slim.onnx", x)
    assert result.max_error < TOLERANCE
    assert result.size_bytes < 0.4 * 4 * 11_689_512  # about a quarter of resnet18's weights
    for batch in (2, 7):
        assert _runs_at(result.path, (batch, 3, 64, 64), slim) < TOLERANCE


def test_slimmed_vit_exports_and_runs_two_batch_sizes(tmp_path):
    vit, x = _tiny_vit(), torch.randn(1, 3, 32, 32)
    slim = surgeon.slim(vit, 0.5, x)
    assert sum(p.numel() for p in slim.parameters()) < sum(p.numel() for p in vit.parameters())
    assert type(slim.encoder.layers[0].self_attention) is SlimMultiheadAttention  # heads 2 -> 1
    result = export_onnx(slim, tmp_path / "slim_vit.onnx", x)
    assert result.max_error < TOLERANCE
    for batch in (3, 6):
        assert _runs_at(result.path, (batch, 3, 32, 32), slim) < TOLERANCE


@pytest.mark.parametrize("v2", [False, True])
def test_slimmed_swin_exports(tmp_path, v2):
    from torchvision.models.swin_transformer import PatchMergingV2, SwinTransformerBlockV2

    kw = {"block": SwinTransformerBlockV2, "downsample_layer": PatchMergingV2} if v2 else {}
    swin = torchvision.models.SwinTransformer([4, 4], 16, [2, 2], [2, 4], [4, 4], num_classes=10, **kw)
    x = torch.randn(1, 3, 48, 48)
    slim = surgeon.slim(swin, 0.5, x)
    assert type(slim.features[1][0].attn).__name__.startswith("Slim")
    result = export_onnx(slim, tmp_path / "slim_swin.onnx", x)
    assert result.max_error < TOLERANCE
    assert _runs_at(result.path, (2, 3, 48, 48), slim) < TOLERANCE
