"""Shape-only runs: a forward in which the layers that do the arithmetic only say their shapes.

Finding every node's shape (the trace stage) and checking the slim model's output shapes (the
check) need no values, yet a real forward spends nearly all its time in convolutions, linear
layers and attention. Inside `shapes_only(model)` those layers run on the meta device (native
shape kernels, no arithmetic) and hand on zeros with the shape, strides and dtype a real run
gives; everything else runs for real on them. The commonest layers skip even the meta
dispatch: a convolution or linear layer on a plain contiguous input has its output shape
worked out here (after the checks its kernel makes), and eval-mode batch norms and activations
hand on zeros of their input's shape. A layer whose meta run raises (a hook reading values, an
unusual argument) runs for real, and so does a call the meta kernel would let through and the
real one rejects, so every error is a real one.
"""
from __future__ import annotations

import weakref
from collections.abc import Iterator
from contextlib import contextmanager
from functools import partial
from typing import Any, Callable, TypeVar

import torch
from torch import nn
from torch.utils._pytree import tree_leaves, tree_map

from .layers.mha import SlimMultiheadAttention

T = TypeVar("T")

__all__ = ["shapes_only", "shape_run", "HEAVY", "QUICK"]

HEAVY: frozenset[Callable[..., Any]] = frozenset(cls.forward for cls in (
    nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.ConvTranspose1d, nn.ConvTranspose2d, nn.ConvTranspose3d,
    nn.Linear, nn.Bilinear, nn.MultiheadAttention, SlimMultiheadAttention,
))
"""`forward` methods run on meta: their meta kernels are cheap next to the arithmetic they
skip. Matched by the method, so a subclass that keeps it (NonDynamicallyQuantizableLinear)
qualifies and one that rewrites `forward` (timm's Conv2dSame) runs for real."""


def _plain(x: torch.Tensor, *params: torch.Tensor | None) -> bool:
    """`x` is an ordinary contiguous tensor (no subclass, not meta) and `params` match its dtype
    and device: a kernel returns a contiguous result of `x`'s dtype."""
    return (type(x) is torch.Tensor and not x.is_meta and x.is_contiguous()
            and all(p is None or (p.dtype == x.dtype and p.device == x.device and p.is_contiguous())
                    for p in params))


SAME = "same"
"""What a quick path returns for a layer whose output has its input's shape and layout."""
REAL = "real"
"""What a quick path returns for a call only the real kernel judges rightly (the meta kernel
lets it through)."""

Shape = tuple[int, ...] | str | None


def _widths_fit(m: nn.Module, x: torch.Tensor, inputs: int, outputs: int) -> bool:
    """A conv's weight, groups and bias agree with each other and with `x`'s channels (batched
    or not): `inputs` / `outputs` are the channel counts its weight says. The meta kernels check
    none of this but the input width of a plain conv, so what fails here runs for real."""
    b = m.bias
    return (x.dim() in (m.weight.dim() - 1, m.weight.dim()) and x.shape[x.dim() - m.weight.dim() + 1] == inputs
            and inputs % m.groups == 0 and outputs % m.groups == 0 and (b is None or tuple(b.shape) == (outputs,)))


def _conv(m: nn.Module, x: torch.Tensor) -> Shape:
    """`Conv{1,2,3}d`'s output shape; REAL where its widths do not fit, None where its meta
    kernel must work out the shape."""
    w = m.weight
    if not _widths_fit(m, x, w.shape[1] * m.groups, w.shape[0]):
        return REAL
    if not _plain(x, w, m.bias) or m.padding_mode != "zeros" or x.dim() != w.dim():
        return None
    spatial = tuple(x.shape[2:])
    if m.padding != "same":
        padding = (0,) * len(spatial) if m.padding == "valid" else m.padding
        spatial = tuple((n + 2 * p - d * (k - 1) - 1) // s + 1 for n, p, d, k, s
                        in zip(spatial, padding, m.dilation, w.shape[2:], m.stride))
    return (x.shape[0], w.shape[0], *spatial) if min(spatial, default=1) >= 1 else None


def _conv_transpose(m: nn.Module, x: torch.Tensor) -> Shape:
    """REAL where a `ConvTranspose{1,2,3}d`'s widths do not fit, else None (its meta kernel
    works out the shape: output padding, output size)."""
    return None if _widths_fit(m, x, m.weight.shape[0], m.weight.shape[1] * m.groups) else REAL


def _linear(m: nn.Module, x: torch.Tensor) -> Shape:
    """`Linear`'s output shape, or None where its meta kernel must decide."""
    w, b = m.weight, m.bias
    if (not _plain(x, w, b) or x.dim() == 0 or w.dim() != 2 or x.shape[-1] != w.shape[1]
            or (b is not None and tuple(b.shape) != (w.shape[0],))):
        return None
    return (*x.shape[:-1], w.shape[0])


def _batch_norm(m: nn.Module, x: torch.Tensor) -> Shape:
    """SAME for an eval-mode batch norm whose statistics fit its input."""
    if m.training or m.running_mean is None or not _plain(x) or x.dim() < 2:
        return None
    try:
        m._check_input_dim(x)
    except ValueError:
        return None
    fits = all(t is None or t.numel() == x.shape[1] for t in (m.weight, m.bias, m.running_mean, m.running_var))
    return SAME if fits else None


def _pointwise(m: nn.Module, x: torch.Tensor) -> Shape:
    """SAME: an activation keeps its input's shape."""
    return SAME if _plain(x) else None


QUICK: dict[Callable[..., Any], Callable[[nn.Module, torch.Tensor], Shape]] = {
    **{cls.forward: _conv for cls in (nn.Conv1d, nn.Conv2d, nn.Conv3d)},
    **{cls.forward: _conv_transpose for cls in (nn.ConvTranspose1d, nn.ConvTranspose2d, nn.ConvTranspose3d)},
    nn.Linear.forward: _linear,
    **{cls.forward: _batch_norm for cls in (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)},
    **{cls.forward: _pointwise for cls in (
        nn.ReLU, nn.ReLU6, nn.SiLU, nn.GELU, nn.Sigmoid, nn.Tanh, nn.Hardswish, nn.Hardsigmoid,
        nn.LeakyReLU, nn.ELU, nn.Mish,
    )},
}
"""One-tensor `forward` methods whose output shape is worked out without a kernel (None: the
layer runs on meta if heavy, else for real; REAL: for real). Matched by the method, as `HEAVY`
is."""


class _Scratch:
    """The zeros a shape-only run made, known by identity and not kept alive: a layer that keeps
    its input's shape may hand one on instead of a fresh copy (nobody else holds it, and its
    values mean nothing), but never a tensor of the caller's."""

    def __init__(self) -> None:
        self._refs: dict[int, weakref.ref] = {}

    def __contains__(self, t: torch.Tensor) -> bool:
        ref = self._refs.get(id(t))
        return ref is not None and ref() is t

    def made(self, t: torch.Tensor) -> torch.Tensor:
        self._refs[id(t)] = weakref.ref(t)
        return t


_PATCHED = HEAVY | QUICK.keys()


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


def _shape_only(scratch: _Scratch, module: nn.Module, forward: Callable[..., Any], *args: Any,
                **kwargs: Any) -> Any:
    """`forward(module, …)`'s output from its quick path (zeros of the shape it gives; the input
    itself where it works in place or is zeros of this run), else from a meta run (turned into
    zeros where the inputs live) for a heavy layer, else from a real run."""
    quick = QUICK.get(forward)
    if quick is not None and len(args) == 1 and not kwargs and isinstance(x := args[0], torch.Tensor):
        shape = quick(module, x)
        if shape is REAL:
            return forward(module, x)
        if shape is SAME:
            return x if getattr(module, "inplace", False) or x in scratch else scratch.made(torch.zeros_like(x))
        if shape is not None:
            return scratch.made(torch.zeros(shape, dtype=x.dtype, device=x.device))
    if forward not in HEAVY:
        return forward(module, *args, **kwargs)
    tensors = [t for t in tree_leaves((args, kwargs)) if isinstance(t, torch.Tensor)]
    if not tensors or any(t.is_meta for t in tensors):
        return forward(module, *args, **kwargs)
    device = tensors[0].device
    try:
        with _meta_weights(module):
            out = forward(module, *tree_map(_meta, args), **tree_map(_meta, kwargs))
    except Exception:  # noqa: BLE001 — the real run below raises the error a user should see
        return forward(module, *args, **kwargs)
    return tree_map(lambda t: scratch.made(torch.empty_strided(t.shape, t.stride(), dtype=t.dtype, device=device).zero_())
                    if isinstance(t, torch.Tensor) else t, out)


@contextmanager
def shapes_only(model: nn.Module) -> Iterator[nn.Module]:
    """Within the block, `model`'s convolutions, linear layers, attention, eval-mode batch norms
    and activations compute shapes only.

    Example:
        >>> with shapes_only(model), torch.no_grad():
        ...     shape = model(x).shape  # the real output's shape, in a fraction of the time
    """
    patched = [m for m in model.modules() if getattr(type(m), "forward", None) in _PATCHED
               and "forward" not in vars(m) and not (m._forward_pre_hooks or m._forward_hooks)]
    scratch = _Scratch()
    for m in patched:
        m.forward = partial(_shape_only, scratch, m, type(m).forward)
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
