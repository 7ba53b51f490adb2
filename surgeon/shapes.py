"""Shape-only runs: a forward in which the layers that do the arithmetic only say their shapes.

Finding every node's shape (the trace stage) and checking the slim model's output shapes (the
check) need no values, yet a real forward spends nearly all its time in convolutions, linear
layers and attention. Inside `shapes_only(model)` those layers run on the meta device (native
shape kernels, no arithmetic) and hand on zeros with the shape, strides and dtype a real run
gives; everything else runs for real on them. A layer whose meta run raises (a hook reading
values, an unusual argument) runs for real, so every error is a real one.
"""
from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from functools import partial
from typing import Any, Callable, TypeVar

import torch
from torch import nn
from torch.utils._pytree import tree_leaves, tree_map

from .layers.mha import SlimMultiheadAttention

T = TypeVar("T")

__all__ = ["shapes_only", "shape_run", "HEAVY"]

HEAVY: frozenset[Callable[..., Any]] = frozenset(cls.forward for cls in (
    nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.ConvTranspose1d, nn.ConvTranspose2d, nn.ConvTranspose3d,
    nn.Linear, nn.Bilinear, nn.MultiheadAttention, SlimMultiheadAttention,
))
"""`forward` methods run on meta: their meta kernels are cheap next to the arithmetic they
skip. Matched by the method, so a subclass that keeps it (NonDynamicallyQuantizableLinear)
qualifies and one that rewrites `forward` (timm's Conv2dSame) runs for real."""


def _meta(t: Any) -> Any:
    return torch.empty_strided(t.shape, t.stride(), dtype=t.dtype, device="meta") if isinstance(t, torch.Tensor) else t


@contextmanager
def _meta_weights(module: nn.Module) -> Iterator[None]:
    """`module`'s parameters and buffers (its submodules' too) swapped for meta twins."""
    saved = []
    try:
        for m in module.modules():
            for store in (m._parameters, m._buffers):
                for key, t in store.items():
                    if t is not None:
                        saved.append((store, key, t))
                        store[key] = _meta(t)
        yield
    finally:
        for store, key, t in saved:
            store[key] = t


def _shape_only(module: nn.Module, forward: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
    """`forward(module, …)` on meta, its outputs turned into zeros where the inputs live."""
    tensors = [t for t in tree_leaves((args, kwargs)) if isinstance(t, torch.Tensor)]
    if not tensors or any(t.is_meta for t in tensors):
        return forward(module, *args, **kwargs)
    device = tensors[0].device
    try:
        with _meta_weights(module):
            out = forward(module, *tree_map(_meta, args), **tree_map(_meta, kwargs))
    except Exception:  # noqa: BLE001 — the real run below raises the error a user should see
        return forward(module, *args, **kwargs)
    return tree_map(lambda t: torch.empty_strided(t.shape, t.stride(), dtype=t.dtype, device=device).zero_()
                    if isinstance(t, torch.Tensor) else t, out)


@contextmanager
def shapes_only(model: nn.Module) -> Iterator[nn.Module]:
    """Within the block, `model`'s convolutions, linear layers and attention compute shapes only.

    Example:
        >>> with shapes_only(model), torch.no_grad():
        ...     shape = model(x).shape  # the real output's shape, in a fraction of the time
    """
    patched = [m for m in model.modules() if getattr(type(m), "forward", None) in HEAVY
               and "forward" not in vars(m) and not (m._forward_pre_hooks or m._forward_hooks)]
    for m in patched:
        m.forward = partial(_shape_only, m, type(m).forward)
    try:
        yield model
    finally:
        for m in patched:
            del m.forward


def shape_run(model: nn.Module, run: Callable[[], T]) -> T:
    """`run()` inside `shapes_only(model)`, and again for real if that fails (zeros stood where
    values were), so an error that reaches the caller is a real run's."""
    try:
        with shapes_only(model):
            return run()
    except Exception:  # noqa: BLE001 — the real run decides
        return run()
