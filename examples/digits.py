"""Pruning on real data: scikit-learn's handwritten digits (1,797 8×8 images, ships offline).

Measures, with fixed seeds, the claims in ``docs/results.md``: structured L2 vs random ranking
(accuracy vs MACs kept), recovery of a CNN slimmed to ≤ 50 % of its MACs, one-shot vs iterative
slimming at high ratios, unstructured accuracy vs sparsity, and Lottery Ticket rewinding vs
random re-initialisation. Writes ``digits_results.json`` and the plots (``img/``) into ``--out``.

Run:
    python examples/digits.py              # full settings, a few minutes on 2 CPU cores
    python examples/digits.py --fast       # the settings tests/test_digits.py uses
"""

from __future__ import annotations

import argparse
import copy
import json
import statistics
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split

import surgeon
from surgeon import lottery, masks, schedule
from surgeon.deploy.measure import count_macs

__all__ = ["Data", "Settings", "FAST", "FULL", "accuracy", "batches", "cnn", "finetune", "fit",
           "load", "lottery_ticket", "mlp", "one_shot_vs_iterative", "plot", "random_importance",
           "ranking", "recalibrated", "recovery", "run", "trained", "unstructured"]

EXAMPLE = torch.zeros(1, 1, 8, 8)


@dataclass(frozen=True)
class Data:
    """Train/test tensors: images ``[N, 1, 8, 8]`` scaled to [0, 1], labels ``[N]``."""

    x_train: torch.Tensor
    y_train: torch.Tensor
    x_test: torch.Tensor
    y_test: torch.Tensor


@dataclass(frozen=True)
class Settings:
    """Epochs, learning rate and seeds of one run of the experiments."""

    epochs: int = 40
    finetune_epochs: int = 10
    step_epochs: int = 2
    lr: float = 1e-3
    seeds: tuple[int, ...] = (0, 1, 2)
    ratios: tuple[float, ...] = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7)
    random_draws: tuple[int, ...] = (0, 1, 2, 3, 4)
    recovery_ratio: float = 0.32
    high_ratios: tuple[float, ...] = (0.8, 0.9)
    sparsities: tuple[float, ...] = (0.5, 0.7, 0.8, 0.9, 0.95, 0.98)
    ticket_sparsity: float = 0.8


FULL = Settings()
FAST = replace(FULL, epochs=25, finetune_epochs=6, seeds=(0,), ratios=(0.3, 0.5),
               high_ratios=(0.8,), sparsities=(0.8,))


def load(seed: int = 0) -> Data:
    """The digits, split 80/20 (stratified) with ``seed``."""
    digits = load_digits()
    x = torch.tensor(digits.images, dtype=torch.float32).unsqueeze(1) / 16
    y = torch.tensor(digits.target)
    x_tr, x_te, y_tr, y_te = train_test_split(x, y, test_size=0.2, random_state=seed,
                                              stratify=y)
    return Data(x_tr, y_tr, x_te, y_te)


def cnn(seed: int = 0) -> nn.Module:
    """A small VGG-style CNN: 3 conv-BN-ReLU blocks, global pooling, a linear classifier."""
    torch.manual_seed(seed)
    return nn.Sequential(
        nn.Conv2d(1, 32, 3, padding=1), nn.BatchNorm2d(32), nn.ReLU(),
        nn.Conv2d(32, 64, 3, padding=1), nn.BatchNorm2d(64), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(64, 64, 3, padding=1), nn.BatchNorm2d(64), nn.ReLU(),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(64, 10))


def mlp(seed: int = 0) -> nn.Module:
    """A 64-300-100-10 MLP, the Lottery Ticket paper's LeNet-300-100 shape."""
    torch.manual_seed(seed)
    return nn.Sequential(nn.Flatten(), nn.Linear(64, 300), nn.ReLU(), nn.Linear(300, 100),
                         nn.ReLU(), nn.Linear(100, 10))


def batches(data: Data, *, seed: int, size: int = 64, rank: int = 0,
            world: int = 1) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """One epoch of shuffled mini-batches; with ``world > 1`` this rank's shard of each."""
    order = torch.randperm(len(data.y_train), generator=torch.Generator().manual_seed(seed))
    for start in range(0, len(order), size * world):
        idx = order[start:start + size * world][rank::world]
        yield data.x_train[idx], data.y_train[idx]


def fit(model: nn.Module, data: Data, optimizer: torch.optim.Optimizer, epochs: int, *,
        seed: int = 0, rank: int = 0, world: int = 1) -> None:
    """Trains ``epochs`` epochs with cross-entropy."""
    model.train()
    for epoch in range(epochs):
        for x, y in batches(data, seed=seed * 1000 + epoch, rank=rank, world=world):
            optimizer.zero_grad()
            F.cross_entropy(model(x), y).backward()
            optimizer.step()


def accuracy(model: nn.Module, data: Data) -> float:
    """Test accuracy in percent."""
    model.eval()
    with torch.no_grad():
        correct = (model(data.x_test).argmax(1) == data.y_test).sum().item()
    return 100 * correct / len(data.y_test)


def trained(make: Callable[[int], nn.Module], data: Data, settings: Settings,
            seed: int) -> nn.Module:
    """A freshly initialised model trained ``settings.epochs`` epochs with Adam."""
    model = make(seed)
    fit(model, data, torch.optim.Adam(model.parameters(), lr=settings.lr), settings.epochs,
        seed=seed)
    return model


def finetune(model: nn.Module, data: Data, settings: Settings, epochs: int, seed: int) -> float:
    """Fine-tunes at 10 % of the training learning rate; returns test accuracy."""
    opt = torch.optim.Adam(model.parameters(), lr=settings.lr * 0.1)
    fit(model, data, opt, epochs, seed=seed + 100)
    return accuracy(model, data)


def random_importance(seed: int) -> Callable[[torch.Tensor, int], torch.Tensor]:
    """Seeded random channel scores, as an ``importance=`` callable for :func:`surgeon.slim`."""
    generator = torch.Generator().manual_seed(seed)
    return lambda tensor, dim: torch.rand(tensor.shape[dim], generator=generator)


def recalibrated(model: nn.Module, data: Data) -> nn.Module:
    """A copy whose BatchNorm statistics are re-estimated on the training images (no gradient
    step): removing channels shifts the statistics the next layers were trained with."""
    return surgeon.recalibrate(copy.deepcopy(model), (x for x, _ in batches(data, seed=0)))


def ranking(dense: nn.Module, data: Data, settings: Settings) -> list[dict]:
    """Accuracy vs MACs kept before fine-tuning, for L2 and (seeded) random channel ranking,
    as slimmed and with BatchNorm statistics recalibrated."""
    base = count_macs(dense, EXAMPLE)
    rows = []
    for ratio in settings.ratios:
        l2 = surgeon.slim(dense, ratio, EXAMPLE, importance="l2")
        randoms = [surgeon.slim(dense, ratio, EXAMPLE, importance=random_importance(seed))
                   for seed in settings.random_draws]
        rows.append(dict(
            ratio=ratio, macs_keep=count_macs(l2, EXAMPLE) / base,
            random_macs_keep=statistics.fmean([count_macs(r, EXAMPLE) / base for r in randoms]),
            l2=accuracy(l2, data), l2_recal=accuracy(recalibrated(l2, data), data),
            random=[accuracy(r, data) for r in randoms],
            random_recal=[accuracy(recalibrated(r, data), data) for r in randoms]))
    return rows


def recovery(dense: nn.Module, data: Data, settings: Settings, seed: int) -> dict:
    """Slimmed by ``settings.recovery_ratio`` (≤ 50 % of the MACs kept), then fine-tuned."""
    slim = surgeon.slim(dense, settings.recovery_ratio, EXAMPLE)
    return dict(ratio=settings.recovery_ratio,
                macs_keep=count_macs(slim, EXAMPLE) / count_macs(dense, EXAMPLE),
                dense=accuracy(dense, data), pruned=accuracy(slim, data),
                finetuned=finetune(slim, data, settings, settings.finetune_epochs, seed))


def one_shot_vs_iterative(dense: nn.Module, data: Data, settings: Settings,
                          seed: int) -> list[dict]:
    """At each high ratio: one-shot slim + N epochs vs 10 % steps with N / steps epochs each."""
    rows = []
    for ratio in settings.high_ratios:
        steps = len(schedule.milestones(ratio, 0.1))
        epochs = steps * settings.step_epochs
        one_shot = surgeon.slim(dense, ratio, EXAMPLE)
        shot_acc = finetune(one_shot, data, settings, epochs, seed)
        model = surgeon.slim(dense, 0.0, EXAMPLE)
        opt = torch.optim.Adam(model.parameters(), lr=settings.lr)
        result = schedule.iterative(
            model, ratio, 0.1, kind="structured", optimizer=opt, example_inputs=EXAMPLE,
            finetune=lambda m, o: fit(m, data, o, settings.step_epochs, seed=seed + 100),
            progress=False)
        rows.append(dict(ratio=ratio, steps=steps, epochs=epochs, one_shot=shot_acc,
                         one_shot_macs=count_macs(one_shot, EXAMPLE) / count_macs(dense, EXAMPLE),
                         iterative=accuracy(result.model, data),
                         iterative_macs=result.history.final.macs_keep,
                         iterative_removed=result.history.final.removed))
    return rows


def unstructured(dense: nn.Module, data: Data, settings: Settings, seed: int) -> list[dict]:
    """Global magnitude masks on a trained model at each sparsity, before and after
    fine-tuning."""
    rows = []
    for sparsity in settings.sparsities:
        model = copy.deepcopy(dense)
        masks.prune(model, sparsity, scope="global")
        pruned = accuracy(model, data)
        rows.append(dict(sparsity=sparsity, dense=accuracy(dense, data), pruned=pruned,
                         finetuned=finetune(model, data, settings, settings.finetune_epochs,
                                            seed)))
    return rows


def lottery_ticket(data: Data, settings: Settings, seed: int) -> dict:
    """IMP (20 % per round) on the MLP to ``ticket_sparsity``; the rewound ticket vs the same
    mask with a random re-initialisation, both trained like the dense network."""
    def train(model: nn.Module) -> None:
        fit(model, data, torch.optim.Adam(model.parameters(), lr=settings.lr), settings.epochs,
            seed=seed)

    dense = mlp(seed)
    train(dense)
    ticket = lottery.imp(mlp(seed), settings.ticket_sparsity, train=train, rate=0.2,
                         progress=False).ticket
    reinit = mlp(seed)
    masks.apply(reinit, masks.masks_of(ticket))
    lottery.rewind(reinit, lottery.snapshot(mlp(seed + 1000)))
    train(ticket)
    train(reinit)
    return dict(sparsity=masks.report(ticket).sparsity, dense=accuracy(dense, data),
                ticket=accuracy(ticket, data), reinit=accuracy(reinit, data))


def run(settings: Settings, *, structured: bool = True) -> dict:
    """All experiments, averaged over ``settings.seeds`` where they train."""
    results: dict = {"settings": asdict(settings), "per_seed": []}
    for seed in settings.seeds:
        data = load(seed)
        dense = trained(cnn, data, settings, seed)
        row = dict(seed=seed, cnn_dense=accuracy(dense, data),
                   unstructured_mlp=unstructured(trained(mlp, data, settings, seed), data,
                                                 settings, seed),
                   unstructured_cnn=unstructured(dense, data, settings, seed),
                   lottery=lottery_ticket(data, settings, seed))
        if structured:
            row.update(ranking=ranking(dense, data, settings),
                       recovery=recovery(dense, data, settings, seed),
                       iterative=one_shot_vs_iterative(dense, data, settings, seed))
        results["per_seed"].append(row)
    return results


def plot(results: dict, out: Path) -> list[Path]:
    """The four figures of ``docs/results.md``, from :func:`run`'s results (seed 0's runs)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out.mkdir(parents=True, exist_ok=True)
    row = results["per_seed"][0]
    figures = []

    def save(fig: plt.Figure, name: str) -> None:
        fig.tight_layout()
        fig.savefig(out / name, dpi=120)
        plt.close(fig)
        figures.append(out / name)

    fig, ax = plt.subplots(figsize=(5.5, 4))
    rank = row["ranking"]
    keep = [100 * r["macs_keep"] for r in rank]
    for key, label, marker, color in (("l2", "L2", "o", "C0"), ("random", "random", "s", "C3")):
        for suffix, note, line in (("", ", as slimmed", ":"), ("_recal", ", BN recalibrated", "-")):
            values = [statistics.fmean(r[key + suffix]) if key == "random" else r[key + suffix]
                      for r in rank]
            ax.plot(keep, values, marker=marker, ls=line, color=color, label=label + note)
    ax.axhline(row["cnn_dense"], color="grey", lw=0.8, label="dense")
    ax.set(xlabel="MACs kept (%)", ylabel="test accuracy (%)", title="Before fine-tuning")
    ax.invert_xaxis()
    ax.legend(fontsize=8)
    save(fig, "digits_ranking.png")

    fig, ax = plt.subplots(figsize=(5.5, 4))
    for key, label in (("unstructured_mlp", "MLP"), ("unstructured_cnn", "CNN")):
        spars = [100 * r["sparsity"] for r in row[key]]
        ax.plot(spars, [r["pruned"] for r in row[key]], "o--", label=f"{label}, masked")
        ax.plot(spars, [r["finetuned"] for r in row[key]], "o-", label=f"{label}, fine-tuned")
    ax.set(xlabel="weight sparsity (%)", ylabel="test accuracy (%)",
           title="Unstructured global magnitude masks")
    ax.legend(fontsize=8)
    save(fig, "digits_unstructured.png")

    fig, ax = plt.subplots(figsize=(5.5, 4))
    its = row["iterative"]
    xs = range(len(its))
    for offset, key, label in ((-0.2, "one_shot", "one-shot"),
                               (0.2, "iterative", "iterative (10 %)")):
        runs = [[r["iterative"][i][key] for r in results["per_seed"]] for i in xs]
        means = [statistics.fmean(v) for v in runs]
        spread = [[m - min(v) for m, v in zip(means, runs)],
                  [max(v) - m for m, v in zip(means, runs)]]
        ax.bar([x + offset for x in xs], means, 0.4, yerr=spread, capsize=4, label=label)
    ax.set_xticks(list(xs), [f"{100 * r['ratio']:.0f} % of channels removed" for r in its])
    ax.set(ylabel="test accuracy (%), mean and range over seeds", ylim=(0, 100),
           title="Same total fine-tuning epochs")
    ax.legend(fontsize=8)
    save(fig, "digits_iterative.png")

    fig, ax = plt.subplots(figsize=(5.5, 4))
    seeds = results["per_seed"]
    for i, key in enumerate(("dense", "ticket", "reinit")):
        ax.bar([s + 0.27 * (i - 1) for s in range(len(seeds))],
               [r["lottery"][key] for r in seeds], 0.27, label=key)
    ax.set_xticks(range(len(seeds)), [f"seed {r['seed']}" for r in seeds])
    ax.set(ylabel="test accuracy (%)", ylim=(85, 100),
           title=f"MLP, {100 * seeds[0]['lottery']['sparsity']:.0f} % sparse")
    ax.legend(fontsize=8)
    save(fig, "digits_lottery.png")
    return figures


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--fast", action="store_true", help="the quick test settings")
    parser.add_argument("--out", type=Path, default=Path("docs"),
                        help="where digits_results.json and img/ go")
    parser.add_argument("--plot-only", action="store_true", help="re-plot out/results.json")
    args = parser.parse_args()
    torch.set_num_threads(1)
    path = args.out / "digits_results.json"
    if args.plot_only:
        results = json.loads(path.read_text())
    else:
        results = run(FAST if args.fast else FULL)
        args.out.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(results, indent=1))
    for figure in plot(results, args.out / "img"):
        print("wrote", figure)


if __name__ == "__main__":
    main()
