"""`surgeon.save` / `surgeon.load`: round trips that rebuild the original by themselves
(torchvision, timm), no pickle anywhere, the wrong architecture named, atomic writes.
(Hugging Face round trips: tests/test_hf.py; random architectures: tests/test_properties.py.)"""
from __future__ import annotations

import json

import pytest
import timm
import torch
import torchvision
from safetensors import safe_open

import surgeon
from surgeon.util import Inputs, outputs


def round_trip(model: torch.nn.Module, x: torch.Tensor, tmp_path) -> torch.nn.Module:
    slim = surgeon.slim(model.eval(), 0.5, x)
    directory = surgeon.save(slim, tmp_path / "slim")
    assert_no_pickle(directory)
    again = surgeon.load(directory)
    assert type(again) is type(model) and not again.training
    expected, got = outputs(slim, Inputs((x,))), outputs(again, Inputs((x,)))
    assert all(torch.equal(a, b) for a, b in zip(got, expected))
    return again


def assert_no_pickle(directory) -> None:
    """Only JSON and safetensors: every file parses as one of them, nothing else is there."""
    for path in directory.iterdir():
        if path.suffix == ".json":
            json.loads(path.read_text())
        else:
            assert path.suffix == ".safetensors", path
            with safe_open(str(path), framework="pt") as f:
                assert list(f.keys())
        assert b"torch._utils" not in path.read_bytes()[:1 << 16]


def test_resnet50(tmp_path):
    again = round_trip(torchvision.models.resnet50(), torch.randn(1, 3, 64, 64), tmp_path)
    assert again.layer1[0].conv1.out_channels == 32


def test_vit_b_16(tmp_path):
    again = round_trip(torchvision.models.vit_b_16(), torch.randn(1, 3, 224, 224), tmp_path)
    assert again.encoder.layers[0].self_attention.num_heads == 6


def test_timm_swin(tmp_path):
    again = round_trip(timm.create_model("swin_tiny_patch4_window7_224"), torch.randn(1, 3, 224, 224), tmp_path)
    assert again.layers[0].blocks[0].attn.num_heads == 2


def test_the_wrong_architecture_is_named(tmp_path):
    slim = surgeon.slim(torchvision.models.resnet18(), 0.5, torch.randn(1, 3, 32, 32))
    surgeon.save(slim, tmp_path / "slim")
    with pytest.raises(surgeon.PlanError, match=r"not the model .*: module 'fc': tensor 'fc.weight' is of shape \(10, 512\)"):
        surgeon.load(tmp_path / "slim", torchvision.models.resnet18(num_classes=10))
    with pytest.raises(surgeon.PlanError, match="module 'layer1.2.conv1' has tensor"):
        surgeon.load(tmp_path / "slim", torchvision.models.resnet34())


def test_a_failed_write_leaves_nothing(tmp_path, monkeypatch):
    slim = surgeon.slim(torchvision.models.resnet18(), 0.5, torch.randn(1, 3, 32, 32))

    def broken(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr("surgeon.io.save_model", broken)
    with pytest.raises(OSError, match="disk full"):
        surgeon.save(slim, tmp_path / "slim")
    assert list(tmp_path.iterdir()) == []
