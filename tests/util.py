"""Helpers shared by the tests: round trip, livened weights, snapshots, examples, a tiny BERT."""
from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch import nn

import surgeon


def n_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def state(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in model.state_dict().items()}


def same_state(model: nn.Module, saved: dict[str, torch.Tensor]) -> bool:
    now = model.state_dict()
    return now.keys() == saved.keys() and all(
        now[k].shape == v.shape and torch.equal(now[k], v) for k, v in saved.items()
    )


def stale_sizes(model: nn.Module) -> list[str]:
    """Standard layers whose size attributes disagree with their tensors (a rebuild that cut a
    tensor and left the count its `repr`, `extra_repr` or a later rebuild reads)."""
    found = []
    for name, m in model.named_modules():
        w = getattr(m, "weight", None)
        if isinstance(m, nn.modules.conv._ConvNd):
            out, inp = (w.shape[1] * m.groups, w.shape[0]) if m.transposed else (w.shape[0], w.shape[1] * m.groups)
            ok = (m.out_channels, m.in_channels) == (out, inp)
        elif isinstance(m, nn.Linear):
            ok = (m.out_features, m.in_features) == tuple(w.shape)
        elif isinstance(m, nn.modules.batchnorm._NormBase):
            t = w if w is not None else m.running_mean
            ok = t is None or m.num_features == t.shape[0]
        elif isinstance(m, nn.GroupNorm):
            ok = w is None or m.num_channels == w.shape[0]
        elif isinstance(m, nn.LayerNorm):
            ok = w is None or tuple(m.normalized_shape) == tuple(w.shape)
        elif isinstance(m, nn.Embedding):
            ok = (m.num_embeddings, m.embedding_dim) == tuple(w.shape)
        else:
            continue
        if not ok:
            found.append(f"{name or type(m).__name__}: {m}")
    return found


def roundtrip(model: nn.Module, x, ratio: float = 0.5, **kw) -> tuple[nn.Module, surgeon.Report]:
    """Slim, then check class, output shape, untouched original and mask-equivalence."""
    model.eval()
    before = state(model)
    inputs = x if isinstance(x, tuple) else (x,)
    with torch.no_grad():
        out = model(*inputs)
    slim = surgeon.slim(model, ratio, x, **kw)
    assert type(slim) is type(model)
    assert same_state(model, before), "slim modified the input model"
    with torch.no_grad():
        got = slim(*inputs)
    assert got.shape == out.shape
    report = surgeon.verify(model, slim)
    assert report.ok, report
    assert not stale_sizes(slim), stale_sizes(slim)
    return slim, report


_NORMS = (nn.modules.batchnorm._NormBase, nn.GroupNorm, nn.LayerNorm)
_LAYER_SCALES = ("gamma", "layer_scale")  # timm LayerScale(2d) / ConvNeXt `gamma`, torchvision CNBlock


def liven(model: nn.Module, x: torch.Tensor) -> nn.Module:
    """Weights at a scale where every channel visibly affects the output: Kaiming-normal
    convs and linears, random norm affine parameters (zero-initialised ones included), layer
    scales of order one (not 1e-6), then BatchNorm statistics measured on random images."""
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, (nn.modules.conv._ConvNd, nn.Linear)):
                fan_in = m.weight[0].numel()
                m.weight.copy_(torch.randn(m.weight.shape, generator=g) * (2.0 / fan_in) ** 0.5)
                if m.bias is not None:
                    m.bias.copy_(torch.randn(m.bias.shape, generator=g) * 0.1)
            elif isinstance(m, _NORMS) and getattr(m, "weight", None) is not None:
                m.weight.copy_(torch.rand(m.weight.shape, generator=g) + 0.5)
                m.bias.copy_(torch.randn(m.bias.shape, generator=g) * 0.1)
        for name, p in model.named_parameters():
            if name.rpartition(".")[2] in _LAYER_SCALES:
                p.copy_(torch.rand(p.shape, generator=g) + 0.5)
    batch = x.repeat(4, 1, 1, 1) + 0.1 * torch.randn((4 * len(x), *x.shape[1:]), generator=g)
    return surgeon.recalibrate(model, [batch]).eval()


def _bits(t: torch.Tensor) -> torch.Tensor:
    """The raw bytes of a tensor (NaN equals NaN); a meta tensor only has its shape."""
    t = t.detach()
    return t if t.is_meta else t.cpu().contiguous().reshape(-1).view(torch.uint8).clone()


def _hooks(m: nn.Module) -> tuple:
    return tuple(dict(getattr(m, k)) for k in ("_forward_hooks", "_forward_pre_hooks", "_backward_hooks",
                                               "_backward_pre_hooks", "_state_dict_hooks",
                                               "_load_state_dict_pre_hooks"))


def snapshot(model: nn.Module) -> dict:
    """Everything a surgery must leave alone: every module's class, mode, hooks and public
    attributes, every parameter's object, bytes, requires_grad and gradient, every buffer."""
    modules = {name: (m, type(m), m.training, _hooks(m), {k: v for k, v in vars(m).items() if not k.startswith("_")},
                      set(vars(m)))
               for name, m in model.named_modules(remove_duplicate=False)}
    params = {name: (p, _bits(p), p.dtype, p.device, p.requires_grad, None if p.grad is None else _bits(p.grad))
              for name, p in model.named_parameters(remove_duplicate=False)}
    buffers = {name: (b, _bits(b), b.dtype) for name, b in model.named_buffers(remove_duplicate=False)}
    return {"modules": modules, "params": params, "buffers": buffers}


def _same(a: object, b: object) -> bool:
    if isinstance(a, torch.Tensor) or isinstance(b, torch.Tensor):
        return a is b
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
        return type(a) is type(b) and len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b))
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(_same(a[k], b[k]) for k in a)
    return a is b or a == b


def assert_unchanged(model: nn.Module, before: dict) -> None:
    """`model` is bit-identical to its `snapshot`."""
    now = snapshot(model)
    assert now["modules"].keys() == before["modules"].keys(), "modules added or removed"
    for name, (m, cls, training, hooks, attrs, keys) in before["modules"].items():
        m2, cls2, training2, hooks2, attrs2, keys2 = now["modules"][name]
        assert keys2 == keys, f"'{name}' gained or lost attributes: {keys ^ keys2}"
        assert m2 is m and cls2 is cls, f"module '{name}' replaced or its class switched"
        assert training2 == training, f"module '{name}' changed mode"
        assert _same(hooks2, hooks), f"hooks of '{name}' changed"
        assert _same(attrs2, attrs), f"attributes of '{name}' changed: {attrs} -> {attrs2}"
    assert now["params"].keys() == before["params"].keys()
    for name, (p, bits, dtype, device, grad_on, grad) in before["params"].items():
        p2, bits2, dtype2, device2, grad_on2, grad2 = now["params"][name]
        assert p2 is p and dtype2 == dtype and device2 == device and grad_on2 == grad_on, name
        assert (bits2.shape == bits.shape) if p.is_meta else torch.equal(bits2, bits), f"parameter '{name}' changed"
        assert (grad is None) == (grad2 is None) and (grad is None or torch.equal(grad, grad2)), name
    assert now["buffers"].keys() == before["buffers"].keys()
    for name, (b, bits, dtype) in before["buffers"].items():
        b2, bits2, dtype2 = now["buffers"][name]
        assert b2 is b and dtype2 == dtype, name
        assert (bits2.shape == bits.shape) if b.is_meta else torch.equal(bits2, bits), f"buffer '{name}' changed"


def params(cases, slow):
    """pytest parameters (names, or tuples led by a name), those named in `slow` marked slow."""
    return [pytest.param(*(c if isinstance(c, tuple) else (c,)), marks=pytest.mark.slow)
            if (c[0] if isinstance(c, tuple) else c) in slow else c for c in cases]


ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = ROOT / "examples"


def load_example(name: str):
    """examples/NAME.py imported as module NAME (examples import each other by name)."""
    sys.path.insert(0, str(EXAMPLES))
    spec = importlib.util.spec_from_file_location(name, EXAMPLES / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def one_thread():
    """One intra-op thread for a module's tests (the digits runs are timed and seeded)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def tiny_bert() -> nn.Module:
    """A 2-layer BertForSequenceClassification (4 heads of 8) with weights large enough that
    every head and MLP unit visibly moves the output."""
    import transformers

    model = transformers.BertForSequenceClassification(transformers.BertConfig(
        vocab_size=100, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64)).eval()
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() > 1:
                p.copy_(torch.randn(p.shape, generator=torch.Generator().manual_seed(p.numel())) * 0.2)
    return model


def torchrun(script: Path, *args: str, timeout: int = 240) -> subprocess.CompletedProcess:
    """Two CPU ranks on a free port (``--standalone``); fails the test on error or timeout."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(
        [str(ROOT), os.environ.get("PYTHONPATH", "")]), "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
           str(script), *args]
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=timeout)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc
