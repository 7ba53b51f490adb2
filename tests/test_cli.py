"""The `surgeon` command, run as a user runs it: one subprocess per command and spec kind, errors
and exit codes included. Models stay small (resnet18 at 64×64, tiny Hugging Face configs)."""
from __future__ import annotations

import json
import os
import pty
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torchvision
from safetensors.torch import save_file

import surgeon

X = torch.randn(1, 3, 64, 64, generator=torch.Generator().manual_seed(0))
SMALL = ["--input-shape", "1,3,64,64"]
ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "COLUMNS": "120"}


def command(*args: str | Path, code: str = "") -> list[str]:
    """`surgeon ARGS` as the console script runs it (`code` runs first: to hide a package)."""
    run = f"{code}\nimport sys\nfrom surgeon.cli import main\nsys.exit(main())"
    return [sys.executable, "-c", run, *map(str, args)]


def surgeon_cli(*args: str | Path, cwd: Path | None = None, code: str = "") -> subprocess.CompletedProcess:
    """`surgeon ARGS` in a fresh interpreter, output captured."""
    return subprocess.run(command(*args, code=code), capture_output=True, text=True, cwd=cwd, env=ENV, timeout=300)


def on_terminal(*args: str | Path) -> tuple[int, str]:
    """`surgeon ARGS` with stdout and stderr on a pseudo-terminal (where progress shows)."""
    parent, child = pty.openpty()
    proc = subprocess.Popen(command(*args), stdout=child, stderr=child, env=ENV)
    os.close(child)
    chunks = []
    while True:
        try:
            chunk = os.read(parent, 4096)
        except OSError:
            break
        if not chunk:
            break
        chunks.append(chunk)
    os.close(parent)
    screen = re.sub(r"\x1b\[[0-9;?]*[A-Za-z]", "", b"".join(chunks).decode(errors="replace"))
    return proc.wait(timeout=300), screen


def livened_resnet18(num_classes: int = 1000) -> torch.nn.Module:
    torch.manual_seed(0)
    model = torchvision.models.resnet18(num_classes=num_classes).eval()
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.weight.uniform_(0.5, 1.5)
                m.bias.uniform_(-0.2, 0.2)
    return model


def test_slim_writes_the_model_onnx_and_reports(tmp_path):
    out = tmp_path / "resnet18-slim"
    code, screen = on_terminal("slim", "resnet18", "--ratio", "0.5", *SMALL, "--out", out, "--repeats", "2")
    assert code == 0, screen
    assert "surgeon: onnx" in screen  # the export runs for seconds: a progress line showed
    assert "params" in screen and "keep" in screen and "Report(OK" in screen
    assert {p.name for p in out.iterdir()} == {"surgeon.json", "model.safetensors", "model.onnx",
                                               "report.json", "report.md"}
    report = json.loads((out / "report.json").read_text())
    for side in ("before", "after"):
        assert {"params", "macs", "torch_ms", "size_bytes"} <= set(report[side])
    assert report["before"]["params"] == 11_689_512 and report["after"]["params"] < 0.3 * 11_689_512
    assert 0 < report["keep"]["macs"] < 0.3 and report["keep"]["torch_ms"] > 0
    assert report["verification"]["ok"] and len(report["verification"]["checked_groups"]) == 12
    assert report["onnx"]["max_error"] < 1e-4
    assert report["groups"] == {"total": 13, "pruned": 12, "frozen": 1, "inexact": 0}
    conv1 = next(layer for layer in report["layers"] if layer["name"] == "conv1")
    assert conv1["before"] == {"out": 64, "in": 3} and conv1["after"] == {"out": 32, "in": 3}
    assert {"load", "trace", "rebuild", "verify", "save", "onnx", "measure"} <= set(report["timings"])
    assert "| params | 11.69 M |" in (out / "report.md").read_text()
    ort = pytest.importorskip("onnxruntime")
    session = ort.InferenceSession(str(out / "model.onnx"), providers=["CPUExecutionProvider"])
    onnx_out = session.run(None, {session.get_inputs()[0].name: X.numpy()})[0]
    loaded = surgeon.load(out)
    assert type(loaded) is torchvision.models.ResNet and loaded.conv1.out_channels == 32
    with torch.no_grad():
        np.testing.assert_allclose(loaded(X).numpy(), onnx_out, rtol=1e-4, atol=1e-4)


def test_weights_are_loaded_and_the_saved_model_reproduces_slim(tmp_path):
    model = livened_resnet18(num_classes=10)  # the classifier's width comes from the weights
    save_file(model.state_dict(), tmp_path / "w.safetensors")
    out = tmp_path / "out"
    done = surgeon_cli("slim", "torchvision:resnet18", "--weights", tmp_path / "w.safetensors", "--ratio", "0.5",
                       *SMALL, "--out", out, "--no-onnx", "--repeats", "1", "--quiet")
    assert done.returncode == 0, done.stderr
    assert done.stdout == "" and done.stderr == ""
    expected = surgeon.slim(model, 0.5, X)
    loaded = surgeon.load(out)
    with torch.no_grad():
        torch.testing.assert_close(loaded(X), expected(X))
    assert json.loads((out / "report.json").read_text())["onnx"] == {"skipped": "--no-onnx"}


def test_a_training_checkpoint_is_unwrapped(tmp_path):
    from surgeon.cli.weights import read_state_dict

    state = {"fc.weight": torch.ones(2, 3), "fc.bias": torch.zeros(2)}
    torch.save({"epoch": 3, "state_dict": {f"module.{k}": v for k, v in state.items()}}, tmp_path / "ckpt.pt")
    assert read_state_dict(tmp_path / "ckpt.pt").keys() == state.keys()


def test_analyze_draws_the_graph_and_the_widths(tmp_path):
    targets = [tmp_path / "graph.dot"] + ([tmp_path / "graph.svg"] if shutil.which("dot") else [])
    graphs = [a for t in targets for a in ("--graph", t)]
    done = surgeon_cli("analyze", "torchvision:resnet18", *SMALL, *graphs, "--plot", tmp_path / "widths.png")
    assert done.returncode == 0, done.stderr
    assert "reaches the model output" in done.stdout and "graph: " in done.stdout
    dot = (tmp_path / "graph.dot").read_text()
    assert dot.startswith("digraph") and dot.count("Conv2d · ") == 20
    fills = {line.split('"')[1]: line.split('fillcolor="')[1].split('"')[0] for line in dot.splitlines()
             if "fillcolor=" in line and "label=" in line}
    assert fills["conv1"] == fills["layer1.0.conv2"] == fills["layer1.1.conv2"]  # one residual stream
    assert fills["layer1.0.conv1"] != fills["conv1"] != fills["layer2.0.conv2"]
    assert "frozen: reaches the model output" in dot and "Conv2d · 64 → 32" in dot
    assert '"layer1.0.conv1" -> "layer1.0.conv2"' in dot and '"(input)" -> "conv1"' in dot
    if shutil.which("dot"):
        svg = (tmp_path / "graph.svg").read_text()
        assert "<svg" in svg and "layer4.1.conv2" in svg
    png = tmp_path / "widths.png"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    from matplotlib.image import imread

    from surgeon.cli.plot import AFTER, BEFORE

    pixels = imread(png)[..., :3]
    for colour in (BEFORE, AFTER):
        rgb = np.array([int(colour[i:i + 2], 16) / 255 for i in (1, 3, 5)])
        assert (np.abs(pixels - rgb).max(-1) < 0.02).sum() > 500, colour


DEEP = '''
import torch
from torch import nn


class Block(nn.Module):
    def __init__(self):
        super().__init__()
        self.a, self.b, self.c = nn.Conv2d(8, 16, 1), nn.Conv2d(16, 16, 3, padding=1), nn.Conv2d(16, 8, 1)

    def forward(self, x):
        return x + self.c(torch.relu(self.b(torch.relu(self.a(x)))))


def build():
    return nn.Sequential(nn.Conv2d(3, 8, 3), nn.Sequential(*[Block() for _ in range(15)]),
                         nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 4))
'''


def test_module_spec_and_repeated_blocks_collapse(tmp_path):
    (tmp_path / "deepnet.py").write_text(DEEP)
    done = surgeon_cli("analyze", "module:deepnet:build", "--input-shape", "1,3,16,16", "--graph", "g.dot",
                       cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    dot = (tmp_path / "g.dot").read_text()
    assert '"1.0.a" -> "1.0.b"' in dot and "1.1.a" not in dot  # the first block, then the rest as one
    assert '"1.0.c" -> "1.1 … 1.14"' in dot and "14 more blocks like 1.0" in dot and dot.count("->") < 12


def test_hugging_face_directory(tmp_path):
    transformers = pytest.importorskip("transformers")
    config = transformers.BertConfig(vocab_size=100, hidden_size=32, num_hidden_layers=2,
                                     num_attention_heads=4, intermediate_size=64)
    torch.manual_seed(0)
    transformers.BertForSequenceClassification(config).save_pretrained(tmp_path / "bert")
    out = tmp_path / "out"
    done = surgeon_cli("slim", f"hf:{tmp_path / 'bert'}", "--ratio", "0.5", "--out", out, "--repeats", "1")
    assert done.returncode == 0, done.stderr
    report = json.loads((out / "report.json").read_text())
    assert "keyword inputs" in report["onnx"]["skipped"] and report["verification"]["ok"]
    assert report["inputs"] == "input_ids (1, 16), attention_mask (1, 16)"
    heads = [layer for layer in report["layers"] if "heads" in layer["before"]]
    assert heads and all(h["after"]["heads"] == 2 for h in heads)
    model = transformers.BertForSequenceClassification.from_pretrained(tmp_path / "bert").eval()
    ids = torch.randint(0, 100, (1, 16))
    expected = surgeon.slim(model, 0.5, {"input_ids": ids, "attention_mask": torch.ones_like(ids)})
    with torch.no_grad():
        torch.testing.assert_close(surgeon.load(out)(input_ids=ids).logits, expected(input_ids=ids).logits)


def test_timm_spec_bench(tmp_path):
    pytest.importorskip("timm")
    done = surgeon_cli("bench", "timm:resnet18", "--input-shape", "64", "--repeats", "2")
    assert done.returncode == 0, done.stderr
    assert "timm:resnet18 at ratio 0.5" in done.stdout and "MACs" in done.stdout and "latency" in done.stdout


def test_bench_a_saved_directory(tmp_path):
    surgeon.save(surgeon.slim(torchvision.models.resnet18(), 0.5, X), tmp_path / "saved")
    done = surgeon_cli("bench", tmp_path / "saved", *SMALL, "--repeats", "2")
    assert done.returncode == 0, done.stderr
    assert "against the model it was slimmed from" in done.stdout and "11.69 M" in done.stdout
    assert "median of 2 runs" in done.stdout


@pytest.mark.parametrize("args, message", [
    (["slim", "resnt18", "--ratio", "0.5", "--out", "x"], "has no model 'resnt18' (did you mean resnet18"),
    (["slim", "foo:bar", "--ratio", "0.5", "--out", "x"], "unknown model source 'foo'"),
    (["slim", "resnet18", "--ratio", "1.5", "--out", "x"], "ratio must be a number in [0, 1), got 1.5"),
    (["slim", "resnet18", "--ratio", "half", "--out", "x"], "must be a number in [0, 1), e.g. 0.5"),
    (["slim", "resnet18", "--ratio", "0.5", "--weights", "weights.pt", "--out", "x"], "cannot read --weights"),
    (["slim", "resnet18", "--ratio", "0.5", "--input-shape", "1,a", "--out", "x"], "--input-shape '1,a'"),
    (["analyze", "timm:resnet18"], "timm is not installed: pip install timm"),
    (["slim", "resnet18", "--ratio", "0.5", "--importance", "activation", "--out", "x"], "pass --calibration FILE"),
    (["slim", "resnet18", "--ratio", "0.5", "--compensate", "--out", "x"], "--compensate moves removed"),
    (["slim", "resnet18", "--ratio", "0.5", "--importance", "taylor", "--calibration", "weights.pt", "--out", "x"],
     "cannot read --calibration weights.pt"),
])
def test_errors_are_one_line_with_exit_code_2(tmp_path, args, message):
    (tmp_path / "weights.pt").write_text("not a checkpoint")
    hide_timm = "import sys; sys.modules['timm'] = None" if "timm" in args[1] else ""
    done = surgeon_cli(*args, cwd=tmp_path, code=hide_timm)
    assert done.returncode == 2
    assert message in done.stderr and len(done.stderr.strip().splitlines()) == 1, done.stderr
    assert "Traceback" not in done.stderr and not (tmp_path / "x").exists()


def test_debug_shows_the_traceback():
    done = surgeon_cli("analyze", "nosuchmodel", "--debug")
    assert done.returncode == 1 and "Traceback" in done.stderr and "InputError" in done.stderr


def test_existing_out_needs_overwrite(tmp_path, capsys):
    from surgeon.cli import main

    assert main(["slim", "resnet18", "--ratio", "0.5", "--out", str(tmp_path)]) == 2
    assert "--overwrite" in capsys.readouterr().err


def test_dot_text_when_graphviz_is_missing(tmp_path, monkeypatch):
    from surgeon.cli import dot

    monkeypatch.setattr(dot.shutil, "which", lambda name: None)
    path, note = dot.render("digraph {}\n", tmp_path / "g.svg")
    assert path == tmp_path / "g.dot" and path.read_text() == "digraph {}\n"
    assert "apt-get install graphviz" in note and not (tmp_path / "g.svg").exists()


def test_checkpoint_slims_a_directory_out_of_core(tmp_path):
    transformers = pytest.importorskip("transformers")
    config = transformers.LlamaConfig(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                      num_attention_heads=4, num_key_value_heads=2, head_dim=8)
    torch.manual_seed(0)
    model = transformers.LlamaForCausalLM(config).eval()
    model.save_pretrained(tmp_path / "src", max_shard_size="30KB")
    done = surgeon_cli("checkpoint", tmp_path / "src", "--ratio", "0.5", "--ignore", "model.layers.0.*",
                       "--out", tmp_path / "slim")
    assert done.returncode == 0, done.stderr
    assert "at ratio 0.5, out of core in" in done.stdout and "params 0.0" in done.stdout
    ids = torch.randint(0, 64, (1, 6))
    expected = surgeon.slim(model, surgeon.Config(0.5, ignore=tuple(n for n, _ in model.named_modules()
                                                                    if n.startswith("model.layers.0."))),
                            {"input_ids": ids})
    again = surgeon.load(tmp_path / "slim")
    with torch.no_grad():
        assert torch.equal(again(ids).logits, expected(ids).logits)
    assert again.model.layers[0].mlp.up_proj.out_features == 64 > again.model.layers[1].mlp.up_proj.out_features
    done = surgeon_cli("checkpoint", tmp_path / "src", "--ratio", "0.5", "--out", tmp_path / "slim")
    assert done.returncode == 2 and "exists: choose a new directory" in done.stderr
    batches = torch.randint(0, 64, (4, 6))
    torch.save({"input_ids": batches}, tmp_path / "ids.pt")
    done = surgeon_cli("checkpoint", tmp_path / "src", "--ratio", "0.5", "--importance", "activation",
                       "--calibration", tmp_path / "ids.pt", "--batch-size", "2", "--out", tmp_path / "data")
    assert done.returncode == 0, done.stderr
    expected = surgeon.slim(model, 0.5, {"input_ids": ids}, importance="activation",
                            calibration=[{"input_ids": batches[:2]}, {"input_ids": batches[2:]}])
    with torch.no_grad():
        assert torch.equal(surgeon.load(tmp_path / "data")(ids).logits, expected(ids).logits)


def test_slim_ranks_on_calibration_data_and_compensates(tmp_path):
    torch.save(torch.randn(8, 3, 64, 64), tmp_path / "samples.pt")
    done = surgeon_cli("slim", "resnet18", "--ratio", "0.5", *SMALL, "--importance", "activation", "--calibration",
                       tmp_path / "samples.pt", "--batch-size", "4", "--compensate", "--no-onnx", "--repeats", "1",
                       "--out", tmp_path / "out")
    assert done.returncode == 0, done.stderr
    assert "at ratio 0.5, ranked by activation on 2 calibration batches, removed channels' means" in done.stdout
    options = json.loads((tmp_path / "out" / "report.json").read_text())["options"]
    assert options["importance"] == "activation" and options["compensate"]
    assert options["calibration"] == {"file": str(tmp_path / "samples.pt"), "batches": 2}
    assert "biases compensated at the means" in done.stdout


def test_calibration_files_become_batches(tmp_path):
    from surgeon.cli.data import load_batches

    x, y = torch.randn(10, 3), torch.randint(0, 4, (10,))
    torch.save(x, tmp_path / "x.pt")
    assert [b.shape[0] for b in load_batches(tmp_path / "x.pt", 4)] == [4, 4, 2]
    save_file({"input_ids": x.long(), "attention_mask": torch.ones(10, 3)}, tmp_path / "kw.safetensors")
    batches = load_batches(tmp_path / "kw.safetensors", 5)
    assert len(batches) == 2 and set(batches[0]) == {"input_ids", "attention_mask"}
    save_file({"inputs": x, "targets": y}, tmp_path / "pairs.safetensors")
    (a, b), _, _ = load_batches(tmp_path / "pairs.safetensors", 4)
    assert torch.equal(a, x[:4]) and torch.equal(b, y[:4])
    torch.save([x[:3], x[3:]], tmp_path / "list.pt")
    assert [b.shape[0] for b in load_batches(tmp_path / "list.pt", 1)] == [3, 7]
    for bad, message in (({"inputs": x, "targets": y[:5]}, "same number of samples"),
                         ({"inputs": x, "input_ids": x}, "'inputs' goes with 'targets' only"),
                         (torch.zeros(0, 3), "no samples"), ("text", "holds str")):
        torch.save(bad, tmp_path / "bad.pt")
        with pytest.raises(surgeon.InputError, match=message):
            load_batches(tmp_path / "bad.pt", 4)
