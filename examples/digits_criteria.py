"""Data-aware importance, global budgets and bias compensation on real data (the digits).

Issue 10's claims, measured on examples/digits.py's CNN and MLP (trained as there) over seeds:
each data criterion (taylor, activation, fluctuation) against L2 at equal MACs, a global
``target_macs`` against the uniform ratio at the same MACs, ``compensate=True`` against none —
as slimmed, with BatchNorm recalibrated (CNN), and after the same short fine-tune. Calibration:
4 training batches of 64 (with labels, so Taylor uses cross-entropy); test images are never seen.
Writes ``digits_criteria.json``, ``img/digits_criteria.png`` and a section of ``results.md``
into ``--out``. Kept apart from digits.py (whose helpers it uses) so each file stays short.

Run:
    python examples/digits_criteria.py           # 3 seeds, a few minutes on 2 CPU cores
    python examples/digits_criteria.py --fast    # the settings tests/test_digits_criteria.py uses
"""

from __future__ import annotations

import argparse
import copy
import json
import re
import statistics
import sys
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import torch
import torch.nn as nn

sys.path.insert(0, str(Path(__file__).resolve().parent))
import digits  # noqa: E402

import surgeon  # noqa: E402
from surgeon.deploy.measure import count_macs  # noqa: E402

__all__ = ["CRITERIA", "FAST", "FULL", "Setup", "calibration", "compare", "markdown", "run"]

CRITERIA = ("l2", "taylor", "activation", "fluctuation")
MODELS = {"cnn": digits.cnn, "mlp": digits.mlp}


@dataclass(frozen=True)
class Setup:
    """Seeds, ratios (share of each layer's channels removed) and the short fine-tune."""

    seeds: tuple[int, ...] = (0, 1, 2)
    ratios: tuple[float, ...] = (0.3, 0.5, 0.7)
    models: tuple[str, ...] = ("cnn", "mlp")
    calibration_batches: int = 4
    finetune_epochs: int = 3
    train: digits.Settings = digits.FULL


FULL = Setup()
FAST = replace(FULL, seeds=(0,), ratios=(0.5,), train=digits.FAST)


def calibration(data: digits.Data, n: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """``n`` shuffled training batches of 64 (images, labels), drawn apart from training order."""
    return [b for _, b in zip(range(n), digits.batches(data, seed=12345))]


def _error(model: nn.Module, dense: nn.Module, data: digits.Data) -> float:
    """Mean absolute logit difference to the dense model on the test images, over the dense
    model's mean absolute logit."""
    model.eval(), dense.eval()
    with torch.no_grad():
        ref = dense(data.x_test)
        return ((model(data.x_test) - ref).abs().mean() / ref.abs().mean()).item()


def _measure(slim: nn.Module, dense: nn.Module, data: digits.Data, setup: Setup, seed: int,
             base: int) -> dict:
    """MACs kept, accuracy and output error as slimmed, with BN recalibrated, fine-tuned."""
    row = dict(macs_keep=count_macs(slim, digits.EXAMPLE) / base, acc=digits.accuracy(slim, data),
               error=_error(slim, dense, data))
    recal = digits.recalibrated(slim, data)
    row.update(acc_recal=digits.accuracy(recal, data), error_recal=_error(recal, dense, data))
    row["acc_finetuned"] = digits.finetune(copy.deepcopy(slim), data, setup.train,
                                           setup.finetune_epochs, seed)
    return row


def compare(dense: nn.Module, data: digits.Data, setup: Setup, seed: int) -> list[dict]:
    """Per ratio and criterion: uniform, uniform + compensate, and global target_macs set to the
    uniform L2 model's MACs."""
    calib = calibration(data, setup.calibration_batches)
    base = count_macs(dense, digits.EXAMPLE)
    rows = []
    for ratio in setup.ratios:
        target = None
        for importance in CRITERIA:
            data_kw = dict(importance=importance,
                           calibration=None if importance == "l2" else calib)
            uniform = surgeon.slim(dense, ratio, digits.EXAMPLE, **data_kw)
            target = target or count_macs(uniform, digits.EXAMPLE)
            arms = dict(uniform=uniform,
                        compensate=surgeon.slim(dense, ratio, digits.EXAMPLE, compensate=True,
                                                importance=importance, calibration=calib),
                        global_macs=surgeon.slim(dense, None, digits.EXAMPLE, target_macs=target,
                                                 **data_kw))
            for arm, slim in arms.items():
                rows.append(dict(ratio=ratio, importance=importance, arm=arm,
                                 **_measure(slim, dense, data, setup, seed, base)))
    return rows


def run(setup: Setup) -> dict:
    """Every model and seed: dense accuracy and :func:`compare`'s rows."""
    results: dict = {"setup": asdict(setup), "per_seed": []}
    for seed in setup.seeds:
        data = digits.load(seed)
        for name in setup.models:
            dense = digits.trained(MODELS[name], data, setup.train, seed)
            results["per_seed"].append(dict(seed=seed, model=name,
                                            dense=digits.accuracy(dense, data),
                                            rows=compare(dense, data, setup, seed)))
            print(f"seed {seed} {name} done", flush=True)
    return results


def _cells(results: dict, model: str, ratio: float, importance: str, arm: str) -> list[dict]:
    return [r for s in results["per_seed"] if s["model"] == model for r in s["rows"]
            if r["ratio"] == ratio and r["importance"] == importance and r["arm"] == arm]


def _mean(rows: list[dict], key: str) -> float:
    return statistics.fmean(r[key] for r in rows)


def _wins(a: list[dict], b: list[dict], key: str, lower: bool = False) -> int:
    return sum((x[key] < y[key]) if lower else (x[key] > y[key]) for x, y in zip(a, b))


def _criteria_table(results: dict, model: str, ratios: tuple[float, ...], key: str) -> list[str]:
    lines = ["| removed | MACs kept | " + " | ".join(CRITERIA) + " |",
             "| ---: | ---: | " + " | ".join("---:" for _ in CRITERIA) + " |"]
    for ratio in ratios:
        l2 = _cells(results, model, ratio, "l2", "uniform")
        cells = []
        for importance in CRITERIA:
            rows = _cells(results, model, ratio, importance, "uniform")
            wins = "" if importance == "l2" else f" ({_wins(rows, l2, key)}/{len(rows)})"
            cells.append(f"{_mean(rows, key):.1f}{wins}")
        lines.append(f"| {100 * ratio:.0f} % | {100 * _mean(l2, 'macs_keep'):.1f} % | "
                     + " | ".join(cells) + " |")
    return lines


def _arm_table(results: dict, model: str, ratios: tuple[float, ...], arm: str,
               keys: tuple[tuple[str, str, bool], ...]) -> list[str]:
    header = " | ".join(f"{label}: none / {arm} (wins)" for _, label, _ in keys)
    lines = [f"| removed | criterion | {header} |",
             "| ---: | --- | " + " | ".join("---:" for _ in keys) + " |"]
    for ratio in ratios:
        for importance in CRITERIA:
            base = _cells(results, model, ratio, importance, "uniform")
            other = _cells(results, model, ratio, importance, arm)
            cells = [f"{_mean(base, k):.{3 if low else 1}f} / {_mean(other, k):.{3 if low else 1}f}"
                     f" ({_wins(other, base, k, lower=low)}/{len(base)})" for k, _, low in keys]
            lines.append(f"| {100 * ratio:.0f} % | {importance} | " + " | ".join(cells) + " |")
    return lines


def markdown(results: dict) -> str:
    """The results.md section: criteria, global budget and compensation tables per model."""
    setup = results["setup"]
    ratios = tuple(setup["ratios"])
    n = len(setup["seeds"])
    out = [f"Mean of {n} seed(s); in brackets, in how many seeds the arm beats the baseline "
           "(L2, uniform ratio, no compensation) of the same seed. Accuracy in %; error: mean "
           "|logit − dense logit| / mean |dense logit| on the test images. Generated by "
           "`python examples/digits_criteria.py`, raw numbers in "
           "[`digits_criteria.json`](digits_criteria.json)."]
    for model in setup["models"]:
        dense = statistics.fmean(s["dense"] for s in results["per_seed"] if s["model"] == model)
        out += ["", f"### {model.upper()} (dense {dense:.2f})"]
        views = (("acc", "as slimmed"), ("acc_recal", "BN recalibrated"),
                 ("acc_finetuned", f"after {setup['finetune_epochs']} fine-tuning epochs"))
        for key, label in views if model == "cnn" else (views[0], views[2]):
            out += ["", f"Criteria at equal MACs, accuracy {label}:", "",
                    *_criteria_table(results, model, ratios, key)]
        acc = "acc_recal" if model == "cnn" else "acc"
        keys = ((acc, "accuracy" + (", BN recal." if model == "cnn" else ""), False),
                ("acc_finetuned", "fine-tuned", False))
        out += ["", "Global `target_macs` (the uniform L2 model's MACs) vs the uniform ratio:", "",
                *_arm_table(results, model, ratios, "global_macs", keys)]
        keys = (("error", "output error", True), ("acc", "accuracy", False),
                *(((acc, "BN recal.", False),) if model == "cnn" else ()),
                ("acc_finetuned", "fine-tuned", False))
        out += ["", "`compensate=True` vs no compensation (same units removed):", "",
                *_arm_table(results, model, ratios, "compensate", keys)]
    return "\n".join(out)


def write_section(path: Path, body: str, name: str = "digits-criteria") -> None:
    """Replace the fenced section ``name`` of ``path`` (results.md) with ``body``."""
    start, end = f"<!-- {name}:start -->", f"<!-- {name}:end -->"
    text = path.read_text()
    block = f"{start}\n{body.strip()}\n{end}"
    pattern = re.compile(re.escape(start) + r".*?" + re.escape(end), flags=re.DOTALL)
    text = pattern.sub(lambda _: block, text) if pattern.search(text) else f"{text.rstrip()}\n\n{block}\n"
    path.write_text(text)


def plot(results: dict, path: Path) -> Path:
    """Accuracy vs MACs kept per criterion (mean of seeds): before (BN recalibrated for the CNN)
    and after fine-tuning, uniform (solid) and global target_macs (dashed)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    setup = results["setup"]
    models = setup["models"]
    fig, axes = plt.subplots(len(models), 2, figsize=(10, 4 * len(models)), squeeze=False)
    for axrow, model in zip(axes, models):
        before = "acc_recal" if model == "cnn" else "acc"
        for ax, key, title in ((axrow[0], before, "before fine-tuning"
                                + (", BN recalibrated" if model == "cnn" else "")),
                               (axrow[1], "acc_finetuned",
                                f"after {setup['finetune_epochs']} fine-tuning epochs")):
            for i, importance in enumerate(CRITERIA):
                for arm, line in (("uniform", "-"), ("global_macs", "--")):
                    cells = [_cells(results, model, r, importance, arm) for r in setup["ratios"]]
                    ax.plot([100 * _mean(c, "macs_keep") for c in cells], [_mean(c, key) for c in cells],
                            marker="o", ls=line, color=f"C{i}",
                            label=f"{importance}{', global' if arm == 'global_macs' else ''}")
            ax.set(xlabel="MACs kept (%)", ylabel="test accuracy (%)", title=f"{model.upper()}, {title}")
            ax.invert_xaxis()
        axrow[0].legend(fontsize=7, ncol=2)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--fast", action="store_true", help="the quick test settings")
    parser.add_argument("--out", type=Path, default=Path("docs"),
                        help="where digits_criteria.json, img/ and results.md are")
    parser.add_argument("--plot-only", action="store_true", help="redo plot and tables from the json")
    args = parser.parse_args()
    torch.set_num_threads(1)
    path = args.out / "digits_criteria.json"
    if args.plot_only:
        results = json.loads(path.read_text())
    else:
        results = run(FAST if args.fast else FULL)
        path.write_text(json.dumps(results, indent=1))
    print("wrote", plot(results, args.out / "img" / "digits_criteria.png"))
    write_section(args.out / "results.md", markdown(results))


if __name__ == "__main__":
    main()
