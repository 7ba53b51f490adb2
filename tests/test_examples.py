"""The examples run end to end: the README main job (smaller model, no latency timing), ViT-B/16,
and a real pretrained Hugging Face encoder."""
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_resnet_example(tmp_path):
    onnx = tmp_path / "slim.onnx"
    done = subprocess.run(
        [sys.executable, str(ROOT / "examples" / "resnet.py"), "--model", "resnet18", "--no-latency",
         "--onnx", str(onnx)], capture_output=True, text=True, timeout=600,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert "Report(OK" in done.stdout and "MACs" in done.stdout and "OnnxResult" in done.stdout
    assert onnx.stat().st_size > 1_000_000


def test_vit_example():
    done = subprocess.run([sys.executable, str(ROOT / "examples" / "vit.py")],
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "12 → 6" in done.stdout and "3072 → 1536" in done.stdout and "Report(OK" in done.stdout


def test_hf_bert_example_on_real_weights():
    done = subprocess.run([sys.executable, str(ROOT / "examples" / "hf_bert.py"), "--ratios", "0.5"],
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    out = done.stdout
    assert "6 layers, 12 heads" in out and out.count("12 → 6") == 6 and "1536 → 768" in out
    assert "Report(OK" in out and "inexact not checked" in out
    cosine = float(out.split("cosine mean ")[1].split(",")[0])
    assert 0.2 < cosine < 0.999  # the embeddings moved, and not into noise
