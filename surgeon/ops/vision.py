"""torchvision ops that fx keeps as opaque calls (registered only when torchvision is installed)."""
from __future__ import annotations

from ..labels import Labels
from .context import Ctx
from .registry import register

__all__ = ["per_sample"]

try:
    from torchvision.ops.stochastic_depth import stochastic_depth
except ImportError:  # torchvision is an optional extra
    stochastic_depth = None


def per_sample(ctx: Ctx) -> Labels:
    """`stochastic_depth(x, p, mode, training)` scales whole samples: channels pass through."""
    return ctx.lab(ctx.arg(0, "input"))


if stochastic_depth is not None:
    register(stochastic_depth)(per_sample)
