"""Out-of-core surgery: `slim_checkpoint` on safetensors checkpoints equals in-memory `slim`
(same plan, bit-identical tensors), loads with `from_pretrained` and `surgeon.load`, and fails
loudly, leaving nothing at `dst`, on a broken checkpoint."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from test_hf import DECODERS, SAVE_PRETRAINED

import surgeon
from surgeon.checkpoint import shards

T = pytest.importorskip("transformers")

IDS = torch.randint(0, 100, (2, 12), generator=torch.Generator().manual_seed(1))
BATCHES = [{"input_ids": IDS[i:i + 1]} for i in range(2)] + [{"input_ids": IDS}]


def _livened(model: torch.nn.Module) -> torch.nn.Module:
    """Every weight drawn afresh (norm gains too), so rankings have no ties."""
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for name, p in model.named_parameters():
            p.copy_(torch.randn(p.shape, generator=g) * (0.3 if p.dim() > 1 else 0.5) + (1.0 if "norm" in name else 0.0))
    return model.eval()


def _checkpoint(name: str, directory: Path, dtype: torch.dtype = torch.float32) -> torch.nn.Module:
    model = _livened(DECODERS[name]()).to(dtype)
    model.save_pretrained(directory, max_shard_size="40KB")
    return model


def _tensors(directory: Path) -> dict[str, torch.Tensor]:
    found: dict[str, torch.Tensor] = {}
    for f in sorted(directory.glob("*.safetensors")):
        found.update(load_file(f))
    return found


@pytest.mark.parametrize("name", DECODERS)
def test_slim_checkpoint_equals_in_memory_slim(name, tmp_path):
    model = _checkpoint(name, tmp_path / "src")
    assert len(list((tmp_path / "src").glob("*.safetensors"))) > 1  # sharded
    plan = surgeon.slim_checkpoint(tmp_path / "src", tmp_path / "dst", 0.5, progress=False)
    slim = surgeon.slim(model, 0.5, {"input_ids": IDS[:1]}, progress=False)
    assert plan.to_json() == slim.surgeon_plan.to_json()
    assert any(plan.removed)
    slim.save_pretrained(tmp_path / "memory")
    written, want = _tensors(tmp_path / "dst"), _tensors(tmp_path / "memory")
    assert written.keys() == want.keys()
    for k, t in written.items():
        assert t.dtype == want[k].dtype and torch.equal(t, want[k]), k
    again = surgeon.load(tmp_path / "dst")
    with torch.no_grad():
        assert torch.equal(again(IDS).logits, slim(IDS).logits)
    if name in SAVE_PRETRAINED:
        pretrained = T.AutoModelForCausalLM.from_pretrained(tmp_path / "dst").eval()
        with torch.no_grad():
            assert torch.equal(pretrained(IDS).logits, slim(IDS).logits)
    stored = json.loads((tmp_path / "dst" / "surgeon.json").read_text())
    assert stored["config"] == json.loads((tmp_path / "src" / "config.json").read_text())
    assert (tmp_path / "dst" / "generation_config.json").is_file()


@pytest.mark.parametrize("importance", ["activation", "fluctuation", surgeon.Criterion(lambda s: s.unit_sum(lambda x: x.var))])
def test_streamed_calibration_makes_the_in_memory_plan(importance, tmp_path):
    model = _checkpoint("llama-gqa", tmp_path / "src")
    plan = surgeon.slim_checkpoint(tmp_path / "src", tmp_path / "dst", 0.5, importance=importance,
                                   calibration=BATCHES, progress=False)
    slim = surgeon.slim(model, 0.5, {"input_ids": IDS[:1]}, importance=importance, calibration=BATCHES,
                        progress=False)
    assert plan.to_json() == slim.surgeon_plan.to_json()
    weight_plan = surgeon.plan(model, 0.5, {"input_ids": IDS[:1]})
    assert plan.removed == weight_plan.removed and plan.cuts != weight_plan.cuts  # data changed the ranking


def test_bfloat16_single_file_checkpoint_with_a_budget(tmp_path):
    model = _livened(DECODERS["qwen2"]()).to(torch.bfloat16)
    model.save_pretrained(tmp_path / "src")
    assert (tmp_path / "src" / shards.SINGLE).is_file()
    plan = surgeon.slim_checkpoint(tmp_path / "src", tmp_path / "dst", target_params=0.8, progress=False)
    slim = surgeon.slim(model, target_params=0.8, example_inputs={"input_ids": IDS[:1]}, progress=False)
    assert plan.to_json() == slim.surgeon_plan.to_json() and plan.budget.reached < plan.budget.total
    assert plan.budget.reached / plan.budget.total == pytest.approx(0.8, abs=0.05)
    written = _tensors(tmp_path / "dst")
    assert all(t.dtype == torch.bfloat16 and torch.equal(t, slim.state_dict()[k]) for k, t in written.items())
    assert not (tmp_path / "dst" / shards.INDEX).exists()


def _broken(tmp_path: Path, how: str) -> Path:
    src = tmp_path / "src"
    _checkpoint("llama-gqa", src)
    index = json.loads((src / shards.INDEX).read_text())
    if how == "missing shard":
        (src / sorted(set(index["weight_map"].values()))[-1]).unlink()
    elif how == "missing tensor":
        name = "model.layers.1.mlp.up_proj.weight"
        file = index["weight_map"].pop(name)
        kept = {k: v for k, v in load_file(src / file).items() if k != name}
        from safetensors.torch import save_file
        save_file(kept, src / file, metadata={"format": "pt"})
        (src / shards.INDEX).write_text(json.dumps(index))
    elif how == "wrong config":
        config = json.loads((src / "config.json").read_text())
        (src / "config.json").write_text(json.dumps({**config, "intermediate_size": 96}))
    elif how == "truncated shard":
        shard = src / sorted(set(index["weight_map"].values()))[0]
        shard.write_bytes(shard.read_bytes()[:-100])
    return src


@pytest.mark.parametrize(("how", "message"), [
    ("missing shard", r"shard model-\d+-of-\d+.safetensors is missing"),
    ("missing tensor", r"holds no tensor 'model.layers.1.mlp.up_proj.weight'"),
    ("wrong config", r"config.json does not match the tensors: 'model.layers.0.mlp.gate_proj.weight' is \(128, 64\)"),
    ("truncated shard", r"bytes past the file's end"),
])
def test_a_broken_checkpoint_is_refused_and_nothing_is_written(how, message, tmp_path):
    src = _broken(tmp_path, how)
    with pytest.raises(surgeon.InputError, match=message):
        surgeon.slim_checkpoint(src, tmp_path / "dst", 0.5, progress=False)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["src"]


def test_an_existing_dst_or_an_in_memory_option_is_refused(tmp_path):
    _checkpoint("llama-gqa", tmp_path / "src")
    (tmp_path / "dst").mkdir()
    with pytest.raises(surgeon.InputError, match="exists: slim_checkpoint writes a new directory"):
        surgeon.slim_checkpoint(tmp_path / "src", tmp_path / "dst", 0.5)
    with pytest.raises(surgeon.InputError, match="taylor.*needs the whole model in memory"):
        surgeon.slim_checkpoint(tmp_path / "src", tmp_path / "new", 0.5, importance="taylor", calibration=BATCHES)
    with pytest.raises(surgeon.InputError, match="compensate=True needs the whole model in memory"):
        surgeon.slim_checkpoint(tmp_path / "src", tmp_path / "new", 0.5, compensate=True, calibration=BATCHES)
    with pytest.raises(surgeon.InputError, match="pass calibration=batches"):
        surgeon.slim_checkpoint(tmp_path / "src", tmp_path / "new", 0.5, importance="activation")
    with pytest.raises(surgeon.InputError, match="holds no config.json"):
        surgeon.slim_checkpoint(tmp_path / "dst", tmp_path / "new", 0.5)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["dst", "src"]


def test_a_failure_while_writing_leaves_nothing_at_dst(tmp_path, monkeypatch):
    _checkpoint("llama-gqa", tmp_path / "src")
    read = shards.Checkpoint.read
    calls = []

    def failing(self, name):
        calls.append(name)
        if len(calls) > 30:
            raise OSError("disk unplugged")
        return read(self, name)

    monkeypatch.setattr(shards.Checkpoint, "read", failing)
    with pytest.raises(OSError, match="disk unplugged"):
        surgeon.slim_checkpoint(tmp_path / "src", tmp_path / "dst", 0.5, progress=False)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["src"]


def test_shards_round_trip_through_safetensors(tmp_path):
    tensors = {"a": torch.randn(3, 5), "b": torch.arange(7, dtype=torch.int64), "c": torch.randn(2, 2).bfloat16(),
               "d": torch.tensor(1.5)}
    shards.write_shard(tmp_path / "x.safetensors", [(k, t.dtype, tuple(t.shape)) for k, t in tensors.items()],
                       tensors.__getitem__, {"format": "pt"})
    back = load_file(tmp_path / "x.safetensors")
    assert back.keys() == tensors.keys() and all(torch.equal(back[k], t) for k, t in tensors.items())
    (tmp_path / "config.json").write_text("{}")
    shutil.move(tmp_path / "x.safetensors", tmp_path / shards.SINGLE)
    ckpt = shards.Checkpoint(tmp_path)
    assert all(torch.equal(ckpt.read(k), t) for k, t in tensors.items())
    assert ckpt.bytes_read == sum(t.numel() * t.element_size() for t in tensors.values())
