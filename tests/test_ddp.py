"""Pruning under DDP: ``torchrun --nproc_per_node=2`` (gloo, CPU) jobs launched from pytest.

Run as a script under torchrun, this file is also the worker of the mask-broadcast test.
"""

import json
import sys
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.nn as nn

from surgeon import distributed, masks, schedule
from util import torchrun

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("kind", ["unstructured", "structured"])
def test_ddp_schedule_leaves_ranks_identical(kind, tmp_path):
    torchrun(ROOT / "examples" / "ddp_finetune.py", "--kind", kind, "--target", "0.5",
             "--step", "0.3", "--epochs", "2", "--out", str(tmp_path))
    summary = json.loads((tmp_path / "summary.json").read_text())
    first, second = summary["ranks"]
    assert summary["world"] == 2 and summary["is_ddp"]
    assert first["shapes"] == second["shapes"]
    assert first["sha256"] == second["sha256"], "ranks hold different weights"
    history = summary["history"]
    assert [h["removed"] for h in history[1:]] == pytest.approx(
        schedule.milestones(0.5, 0.3), abs=0.04)
    if kind == "structured":
        assert history[-1]["macs_keep"] < 0.5
        assert first["shapes"]["0.weight"][0] < 32
    else:
        assert first["sparsity"] == pytest.approx(0.5, abs=1e-3)
    saved = torch.load(tmp_path / "model.pt")
    assert {k: list(v.shape) for k, v in saved.items()} == first["shapes"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.pt", "summary.json"]


def test_masks_are_decided_on_rank_zero_even_when_weights_differ(tmp_path):
    torchrun(Path(__file__), str(tmp_path))
    by_rank = [torch.load(tmp_path / f"masks{rank}.pt") for rank in range(2)]
    assert by_rank[0].keys() == by_rank[1].keys() and by_rank[0]
    for name, mask in by_rank[0].items():
        assert torch.equal(mask, by_rank[1][name])
    weights = [torch.load(tmp_path / f"weights{rank}.pt") for rank in range(2)]
    assert not torch.equal(weights[0], weights[1]), "ranks should have differed"
    rank0_masks = masks.masks_of(_masked_like(weights[0]))
    for name, mask in rank0_masks.items():
        assert torch.equal(mask, by_rank[1][name]), "rank 1 did not take rank 0's masks"


def _model(seed: int) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(16, 16), nn.ReLU(), nn.Linear(16, 4))


def _masked_like(weight: torch.Tensor) -> nn.Module:
    """Rank 0's model (seed 0) with the masks the schedule computes for it on one process."""
    model = _model(0)
    assert torch.equal(model[0].weight, weight)
    schedule.iterative(model, 0.6, 0.5, kind="unstructured", optimizer=torch.optim.SGD(
        model.parameters(), lr=0.1), finetune=lambda m, o: None, progress=False)
    return model


def _worker(out: Path) -> None:
    """Each rank builds a different model (no DDP) and runs the unstructured schedule."""
    dist.init_process_group("gloo")
    rank = dist.get_rank()
    model = _model(rank)
    schedule.iterative(model, 0.6, 0.5, kind="unstructured", optimizer=torch.optim.SGD(
        model.parameters(), lr=0.1), finetune=lambda m, o: None, progress=False)
    torch.save(masks.masks_of(model), out / f"masks{rank}.pt")
    torch.save(model[0].weight_orig.detach(), out / f"weights{rank}.pt")
    assert distributed.is_main() == (rank == 0)
    dist.barrier()  # both ranks done before the group goes (a rank tearing down first aborted the other once)
    dist.destroy_process_group()


if __name__ == "__main__":
    _worker(Path(sys.argv[1]))
