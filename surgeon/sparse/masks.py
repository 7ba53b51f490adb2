"""Unstructured magnitude masks ``W ⊙ M`` on top of :mod:`torch.nn.utils.prune`.

The reparametrisation is PyTorch's own: a pruned layer holds ``weight_orig`` (the trained
parameter), a ``weight_mask`` buffer and a forward pre-hook that sets ``weight = weight_orig *
weight_mask``. This module only chooses the masks, so that the requested sparsity is hit
exactly, and makes them permanent or readable.

Example:
    >>> import torch.nn as nn
    >>> from surgeon import masks
    >>> model = nn.Sequential(nn.Linear(8, 8), nn.ReLU(), nn.Linear(8, 2))
    >>> masks.prune(model, 0.5, scope="global").sparsity
    0.5
    >>> masks.commit(model).sparsity  # plain ``weight`` parameters again, zeros kept
    0.5
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

import torch
import torch.nn as nn
from rich.table import Table
from torch.nn.utils import prune as torch_prune

from ..distributed import unwrap
from ..errors import SurgeonError

__all__ = [
    "DEFAULT_INCLUDE",
    "LayerSparsity",
    "MaskError",
    "SparsityReport",
    "apply",
    "check_fraction",
    "commit",
    "load_state_dict",
    "masks_of",
    "prune",
    "report",
]

DEFAULT_INCLUDE: tuple[type[nn.Module], ...] = (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d)
"""Layer types :func:`prune` masks unless told otherwise."""


class MaskError(SurgeonError, ValueError):
    """Bad input to a mask function (sparsity out of range, unknown scope, no layers …)."""


def check_fraction(name: str, value: object, error: type[Exception] = MaskError) -> float:
    """Returns ``value`` as a float in [0, 1), or raises ``error`` naming it.

    Example:
        >>> check_fraction("sparsity", 0.8)
        0.8
    """
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise error(f"{name} must be a number in [0, 1), got {value!r} ({type(value).__name__})")
    if not 0 <= value < 1:
        raise error(f"{name} must be in [0, 1), got {value!r}")
    return float(value)


@dataclass(frozen=True)
class LayerSparsity:
    """Zeros in one layer's effective weight.

    Attributes:
        name: qualified module name, as in ``model.named_modules()``.
        zeros: number of weights that are zero (masked, or zero after :func:`commit`).
        total: number of weights.
        masked: whether the layer carries a live ``weight_mask``.
    """

    name: str
    zeros: int
    total: int
    masked: bool

    @property
    def sparsity(self) -> float:
        """Fraction of zero weights."""
        return self.zeros / self.total if self.total else 0.0

    def __repr__(self) -> str:
        state = "masked" if self.masked else "no mask"
        return f"{self.name or '<root>'}: {self.sparsity:.2%} of {self.total:,} ({state})"


@dataclass(frozen=True)
class SparsityReport:
    """Per-layer and total sparsity of a model; ``rich.print(report)`` shows it as a table.

    Example:
        >>> rep = masks.report(model)
        >>> rep.sparsity, rep["0"].zeros
        (0.5, 40)
    """

    layers: tuple[LayerSparsity, ...]

    @property
    def zeros(self) -> int:
        """Zero weights over all layers."""
        return sum(layer.zeros for layer in self.layers)

    @property
    def total(self) -> int:
        """Weights over all layers."""
        return sum(layer.total for layer in self.layers)

    @property
    def sparsity(self) -> float:
        """Fraction of zero weights over all layers."""
        return self.zeros / self.total if self.total else 0.0

    def __getitem__(self, name: str) -> LayerSparsity:
        for layer in self.layers:
            if layer.name == name:
                return layer
        raise KeyError(f"no layer {name!r} in report; layers: {[x.name for x in self.layers]}")

    def __repr__(self) -> str:
        rows = "".join(f"\n  {layer!r}" for layer in self.layers)
        return f"SparsityReport(total {self.sparsity:.2%} of {self.total:,} weights{rows})"

    def table(self) -> Table:
        """The report as a :class:`rich.table.Table`."""
        table = Table(title="Sparsity")
        for column in ("layer", "zeros", "weights", "sparsity", "mask"):
            table.add_column(column, justify="left" if column == "layer" else "right")
        for layer in self.layers:
            table.add_row(layer.name, f"{layer.zeros:,}", f"{layer.total:,}",
                          f"{layer.sparsity:.2%}", "yes" if layer.masked else "no")
        table.add_row("total", f"{self.zeros:,}", f"{self.total:,}", f"{self.sparsity:.2%}", "",
                      style="bold")
        return table

    def __rich__(self) -> Table:
        return self.table()


def _is_masked(module: nn.Module) -> bool:
    return isinstance(getattr(module, "weight_mask", None), torch.Tensor) and hasattr(
        module, "weight_orig")


def _effective_weight(module: nn.Module) -> torch.Tensor:
    if _is_masked(module):
        return (module.weight_orig * module.weight_mask).detach()
    return module.weight.detach()


def _units(tensor: torch.Tensor, dim: int | None) -> torch.Tensor:
    """Rows are the units a mask keeps or drops: single weights, or slices along ``dim``."""
    if dim is None:
        return tensor.reshape(-1, 1)
    return tensor.movedim(dim, 0).reshape(tensor.shape[dim], -1)


def _from_units(keep: torch.Tensor, weight: torch.Tensor, dim: int | None) -> torch.Tensor:
    """The weight-shaped mask of per-unit keep-flags (inverse of :func:`_units`)."""
    if dim is None:
        return keep.reshape(weight.shape).to(weight.dtype)
    moved = weight.movedim(dim, 0)
    flags = keep.reshape(-1, *([1] * (moved.dim() - 1))).expand_as(moved)
    return flags.movedim(0, dim).to(weight.dtype)


def _select(model: nn.Module, include: tuple[type[nn.Module], ...],
            exclude: Iterable[str]) -> list[tuple[str, nn.Module]]:
    if not isinstance(include, tuple) or not all(
            isinstance(t, type) and issubclass(t, nn.Module) for t in include):
        raise MaskError(f"include must be a tuple of nn.Module types, got {include!r}")
    skipped = set(exclude)
    layers = [(name, module) for name, module in model.named_modules()
              if isinstance(module, include) and name not in skipped
              and isinstance(getattr(module, "weight", None), torch.Tensor)]
    unknown = skipped - {name for name, _ in model.named_modules()}
    if unknown:
        raise MaskError(f"exclude names no module of the model: {sorted(unknown)}")
    if not layers:
        names = [t.__name__ for t in include]
        raise MaskError(f"no layer of types {names} to mask in {type(model).__name__}")
    return layers


def _pruned_count(already: int, total: int, sparsity: float, relative: bool) -> int:
    if relative:
        return already + round(sparsity * (total - already))
    return max(already, round(sparsity * total))


def _keep(scores: torch.Tensor, dropped_before: torch.Tensor, sparsity: float,
          relative: bool) -> torch.Tensor:
    """Keep-flags with exactly the requested number of units dropped, lowest scores first."""
    already = int(dropped_before.sum())
    count = _pruned_count(already, scores.numel(), sparsity, relative)
    ranked = scores.masked_fill(dropped_before, -math.inf)
    order = torch.sort(ranked, stable=True).indices
    keep = torch.ones_like(dropped_before)
    keep[order[:count]] = False
    return keep


def _set_mask(module: nn.Module, mask: torch.Tensor) -> None:
    if _is_masked(module):
        module.weight_mask.copy_(mask)
        module.weight = module.weight_orig * module.weight_mask
    else:
        torch_prune.custom_from_mask(module, "weight", mask)


def prune(model: nn.Module, sparsity: float, *, scope: str = "layer", norm: float = 1,
          dim: int | None = None, include: tuple[type[nn.Module], ...] = DEFAULT_INCLUDE,
          exclude: Iterable[str] = (), relative: bool = False) -> SparsityReport:
    """Masks the smallest weights of every included layer so it reaches ``sparsity``.

    Masks only grow: weights masked before stay masked and count towards the target, so
    ``prune(m, 0.1)`` twice leaves 10 % masked and ``prune(m, 0.2)`` after it 20 %. With
    ``relative=True`` the fraction applies to the surviving weights instead.

    Args:
        model: the model, changed in place (a DDP wrapper is looked through).
        sparsity: fraction of weights (or of slices along ``dim``) to be masked, in [0, 1).
        scope: ``"layer"`` gives every layer that sparsity; ``"global"`` ranks all included
            weights together under one threshold, so layers end at different sparsities.
        norm: the p of the Lp norm that scores a slice along ``dim``; a single weight's score
            is ``|w|`` for every p.
        dim: if given, whole slices along this weight dimension are masked (``dim=0``: output
            channels), ranked by their Lp norm; the sparsity then counts slices.
        include: layer types to mask.
        exclude: qualified names of layers to leave dense (e.g. the classifier).
        relative: take ``sparsity`` of the surviving weights rather than of all weights.

    Returns:
        The :class:`SparsityReport` of the masked layers.

    Raises:
        MaskError: sparsity outside [0, 1), unknown scope, bad norm or no layer to mask.

    Example:
        >>> masks.prune(model, 0.8, scope="global", exclude=("fc",)).sparsity
        0.8
    """
    sparsity = check_fraction("sparsity", sparsity)
    if scope not in ("layer", "global"):
        raise MaskError(f"scope must be 'layer' or 'global', got {scope!r}")
    if isinstance(norm, bool) or not isinstance(norm, (int, float)) or not norm > 0:
        raise MaskError(f"norm must be a positive number (the p of an Lp norm), got {norm!r}")
    if dim is not None and not isinstance(dim, int):
        raise MaskError(f"dim must be an int or None, got {dim!r}")
    layers = _select(unwrap(model), include, exclude)
    scores, dropped = [], []
    for name, module in layers:
        weight = _effective_weight(module)
        if dim is not None and not -weight.dim() <= dim < weight.dim():
            raise MaskError(f"dim={dim} is out of range for {name} with weight "
                            f"{tuple(weight.shape)}")
        scores.append(torch.linalg.vector_norm(_units(weight, dim).float(), ord=norm, dim=1))
        dropped.append(_units(module.weight_mask, dim).eq(0).all(dim=1) if _is_masked(module)
                       else torch.zeros_like(scores[-1], dtype=torch.bool))
    if scope == "global":
        device = scores[0].device
        flat_keep = _keep(torch.cat([s.to(device) for s in scores]),
                          torch.cat([d.to(device) for d in dropped]), sparsity, relative)
        keeps = [k.to(s.device) for k, s in zip(flat_keep.split([s.numel() for s in scores]),
                                                scores)]
    else:
        keeps = [_keep(s, d, sparsity, relative) for s, d in zip(scores, dropped)]
    for (_, module), keep in zip(layers, keeps):
        mask = _from_units(keep, module.weight_orig if _is_masked(module) else module.weight, dim)
        if _is_masked(module):
            mask = mask * module.weight_mask
        _set_mask(module, mask.contiguous())
    return report(model, include=include)


def commit(model: nn.Module) -> SparsityReport:
    """Makes every mask permanent, as :func:`torch.nn.utils.prune.remove` does.

    Afterwards each layer has a plain ``weight`` parameter equal to ``weight_orig * weight_mask``
    and no ``weight_orig``, ``weight_mask`` or pruning hook.

    Example:
        >>> masks.commit(model)  # doctest: +ELLIPSIS
        SparsityReport(total 80.00% of ...)
    """
    for module in unwrap(model).modules():
        names = [hook._tensor_name for hook in module._forward_pre_hooks.values()
                 if isinstance(hook, torch_prune.BasePruningMethod)]
        for name in names:
            torch_prune.remove(module, name)
    return report(model)


def report(model: nn.Module, *,
           include: tuple[type[nn.Module], ...] = DEFAULT_INCLUDE) -> SparsityReport:
    """Sparsity of every masked layer and every layer of an ``include`` type.

    Example:
        >>> print(masks.report(model).sparsity)
        0.5
    """
    layers = []
    for name, module in unwrap(model).named_modules():
        if _is_masked(module):
            mask = module.weight_mask
            layers.append(LayerSparsity(name, int(mask.eq(0).sum()), mask.numel(), True))
        elif isinstance(module, include) and isinstance(getattr(module, "weight", None),
                                                        torch.Tensor):
            weight = module.weight
            layers.append(LayerSparsity(name, int(weight.eq(0).sum()), weight.numel(), False))
    return SparsityReport(tuple(layers))


def masks_of(model: nn.Module) -> dict[str, torch.Tensor]:
    """The live masks, keyed by qualified module name (copies, as bool tensors).

    Example:
        >>> sorted(masks.masks_of(model))
        ['0', '2']
    """
    return {name: module.weight_mask.detach().bool().clone()
            for name, module in unwrap(model).named_modules() if _is_masked(module)}


def apply(model: nn.Module, masks: Mapping[str, torch.Tensor]) -> SparsityReport:
    """Sets the given masks (as from :func:`masks_of`), replacing the layers' current ones.

    Example:
        >>> masks.apply(other_model, masks.masks_of(model)).sparsity
        0.5
    """
    modules = dict(unwrap(model).named_modules())
    for name, mask in masks.items():
        module = modules.get(name)
        if module is None or not isinstance(getattr(module, "weight", None), torch.Tensor):
            raise MaskError(f"mask for {name!r}, but the model has no layer {name!r} with a weight")
        weight = module.weight_orig if _is_masked(module) else module.weight
        if tuple(mask.shape) != tuple(weight.shape):
            raise MaskError(f"mask for {name!r} has shape {tuple(mask.shape)}, "
                            f"but its weight has shape {tuple(weight.shape)}")
        _set_mask(module, mask.to(device=weight.device, dtype=weight.dtype).contiguous())
    return report(model)


def load_state_dict(model: nn.Module, state_dict: Mapping[str, torch.Tensor], *,
                    strict: bool = True) -> SparsityReport:
    """Loads a state dict saved from a masked model into a model of the same architecture.

    The ``*.weight_mask`` entries are applied first, so the ``weight_orig`` / ``weight_mask``
    keys exist when :meth:`torch.nn.Module.load_state_dict` runs.

    Example:
        >>> masks.load_state_dict(fresh_model, masked_model.state_dict()).sparsity
        0.5
    """
    suffix = ".weight_mask"
    found = {key[: -len(suffix)]: value for key, value in state_dict.items()
             if key.endswith(suffix)}
    if "weight_mask" in state_dict:
        found[""] = state_dict["weight_mask"]
    apply(model, found)
    unwrap(model).load_state_dict(state_dict, strict=strict)
    return report(model)
