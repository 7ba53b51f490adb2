"""torchvision ops that fx keeps as opaque calls (registered only when torchvision is installed)."""
from __future__ import annotations

import numpy as np

from ..labels import Labels
from .context import Ctx
from .registry import register

__all__ = ["per_sample", "patch_merging_pad"]

try:
    from torchvision.models.swin_transformer import _patch_merging_pad
    from torchvision.ops.stochastic_depth import stochastic_depth
except ImportError:  # torchvision is an optional extra
    stochastic_depth = _patch_merging_pad = None


def per_sample(ctx: Ctx) -> Labels:
    """`stochastic_depth(x, p, mode, training)` scales whole samples: channels pass through."""
    return ctx.lab(ctx.arg(0, "input"))


def patch_merging_pad(ctx: Ctx) -> Labels:
    """Swin's patch merging gathers 2×2 neighbours into the channels: [..., H/2, W/2, 4·C] holds
    channel c at c, C + c, 2C + c and 3C + c (the next Linear's columns follow)."""
    x = ctx.lab(ctx.arg(0, "x"))
    ctx.freeze(Labels(x[-3:-1]), "patch merging subsamples this dimension")
    return Labels([*x[:-3], None, None, None if x[-1] is None else np.tile(x[-1], 4)])


if stochastic_depth is not None:
    register(stochastic_depth)(per_sample)
    register(_patch_merging_pad)(patch_merging_pad)
