"""BatchNorm statistics re-estimated after surgery."""
import torch
from torch import nn

import surgeon


def test_statistics_are_the_batch_average_and_modes_restored():
    model = nn.Sequential(nn.Conv2d(3, 8, 3), nn.BatchNorm2d(8), nn.ReLU(), nn.Conv2d(8, 4, 1), nn.BatchNorm2d(4)).eval()
    slim = surgeon.slim(model, 0.5, torch.randn(1, 3, 6, 6))
    batches = [torch.randn(4, 3, 6, 6) for _ in range(3)]
    surgeon.recalibrate(slim, batches)
    with torch.no_grad():
        acts = torch.cat([slim[0](b) for b in batches])
    assert torch.allclose(slim[1].running_mean, acts.mean((0, 2, 3)), atol=1e-5)
    assert not slim.training and slim[1].momentum == 0.1
    assert slim[1].num_batches_tracked == 3
