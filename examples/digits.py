"""Pruning on real data: scikit-learn's handwritten digits (1,797 8×8 images, ships offline).

Measures, with fixed seeds, the claims in ``docs/results.md``: structured L2 vs random ranking
(accuracy vs MACs kept), recovery of a CNN slimmed to ≤ 50 % of its MACs, one-shot vs iterative
slimming at high ratios, unstructured accuracy vs sparsity, and Lottery Ticket rewinding vs
random re-initialisation. Writes ``results.json`` and the plots into ``--out``.

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
from surgeon.measure import count_macs

__all__ = ["Data", "Settings", "FAST", "FULL", "accuracy", "cnn", "fit", "load", "mlp",
           "lottery_ticket", "one_shot_vs_iterative", "ranking", "recovery", "unstructured"]

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
    high_ratios: tuple[float, ...] = (0.8, 0.9)
    sparsities: tuple[float, ...] = (0.5, 0.7, 0.8, 0.9, 0.95, 0.98)
    ticket_sparsity: float = 0.8


FULL = Settings()
FAST = replace(FULL, epochs=25, finetune_epochs=6, seeds=(0,), ratios=(0.2, 0.3, 0.5),
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


def _mean(values: list[float]) -> float:
    return statistics.fmean(values)


def ranking(dense: nn.Module, data: Data, settings: Settings) -> list[dict]:
    """Accuracy vs MACs kept before fine-tuning, for L2 and random channel ranking."""
    base = count_macs(dense, EXAMPLE)
    rows = []
    for ratio in settings.ratios:
        l2 = surgeon.slim(dense, ratio, EXAMPLE, importance="l2")
        randoms = []
        for seed in settings.seeds:
            torch.manual_seed(seed)
            randoms.append(accuracy(surgeon.slim(dense, ratio, EXAMPLE, importance="random"),
                                    data))
        rows.append(dict(ratio=ratio, macs_keep=count_macs(l2, EXAMPLE) / base,
                         l2=accuracy(l2, data), random=_mean(randoms),
                         random_min=min(randoms), random_max=max(randoms)))
    return rows


def recovery(dense: nn.Module, data: Data, settings: Settings, seed: int) -> dict:
    """The smallest ratio of ``settings.ratios`` that keeps ≤ 50 % MACs, fine-tuned."""
    base = count_macs(dense, EXAMPLE)
    for ratio in settings.ratios:
        slim = surgeon.slim(dense, ratio, EXAMPLE)
        keep = count_macs(slim, EXAMPLE) / base
        if keep <= 0.5:
            pruned = accuracy(slim, data)
            return dict(ratio=ratio, macs_keep=keep, dense=accuracy(dense, data), pruned=pruned,
                        finetuned=finetune(slim, data, settings, settings.finetune_epochs, seed))
    raise ValueError(f"no ratio in {settings.ratios} keeps <= 50 % of the MACs")


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
                         iterative_macs=result.history.final.macs_keep))
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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--fast", action="store_true", help="the quick test settings")
    parser.add_argument("--out", type=Path, default=Path("docs"), help="results.json and img/")
    args = parser.parse_args()
    torch.set_num_threads(1)
    results = run(FAST if args.fast else FULL)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "results.json").write_text(json.dumps(results, indent=1))
    from plots import plot_all  # noqa: PLC0415 (matplotlib only when plotting)
    plot_all(results, args.out / "img")
    print(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
