"""Handler registry: one handler per layer type, function or tensor method.

A *propagation* handler takes a `Ctx` for one fx node and returns the output `Labels`, relating
input and output atoms through the context (union / freeze / bind a parameter). A *resizer*
fixes a rebuilt module's size attributes so that its own `forward` still runs.

Example::

    @register(nn.ReLU, torch.relu, "relu")
    def pointwise(ctx: Ctx) -> Labels:
        return ctx.broadcast_merge(ctx.tensor_args())

Keys are module classes (matched exactly, or through a base class whose `forward` the subclass
does not override), callables (`call_function` targets; an ATen op matches its overload or its
overload packet, `aten.add.Tensor` or `aten.add`) or strings (`call_method` names). A module
handler registered with `when=` covers only the instances it accepts; the others are traced
through as if no handler existed.
"""
from __future__ import annotations

import sys
from collections.abc import Callable
from importlib import import_module
from typing import Any

from torch import nn

__all__ = ["register", "resizer", "finisher", "lookup", "lookup_resizer", "finishers", "registered",
           "load_optional"]

Handler = Callable[..., Any]
Resizer = Callable[[nn.Module, dict], None]
Finisher = Callable[[nn.Module, Callable[[object], None]], None]

_HANDLERS: dict[Any, Handler] = {}
_WHEN: dict[type, Callable[[nn.Module], bool]] = {}
_RESIZERS: dict[type, Resizer] = {}
_FINISHERS: list[Finisher] = []


def register(*keys: Any, when: Callable[[nn.Module], bool] | None = None) -> Callable[[Handler], Handler]:
    """Register a propagation handler for module types, functions or method names; for module
    types, `when(module)` may limit it to the instances it can describe."""

    def deco(fn: Handler) -> Handler:
        for key in keys:
            _HANDLERS[key] = fn
            if when is not None:
                _WHEN[key] = when
        return fn

    return deco


def resizer(*types: type) -> Callable[[Resizer], Resizer]:
    """Register the attribute fixer `fn(module, sizes)` for module types (and subclasses)."""

    def deco(fn: Resizer) -> Resizer:
        for t in types:
            _RESIZERS[t] = fn
        return fn

    return deco


_OPTIONAL = {"torchvision": "torchvision", "timm": "timm", "transformers": "hf"}
"""Libraries with handler modules in `surgeon.ops`, loaded once the library itself is."""


def load_optional() -> None:
    """Import the handlers of every optional library (torchvision, timm, transformers) that
    the program has imported: its models can only be in play then."""
    for library, module in _OPTIONAL.items():
        if library in sys.modules:
            import_module(f"surgeon.ops.{module}")


def finisher(fn: Finisher) -> Finisher:
    """Register `fn(model, remember)`, run once on the whole model after every resizer (a
    Hugging Face `config` shared by all layers). It calls `remember(obj)` before changing an
    object's attributes, so a failed surgery can put them back."""
    _FINISHERS.append(fn)
    return fn


def finishers() -> list[Finisher]:
    """The registered finishers, in registration order."""
    return list(_FINISHERS)


def lookup(target: Any) -> Handler | None:
    """Handler for a module instance, a function or a method name; None if unknown."""
    if isinstance(target, nn.Module):
        cls = type(target)
        for base in cls.__mro__:
            if base is not cls and getattr(base, "forward", None) is not cls.forward:
                return None
            if base in _HANDLERS:
                when = _WHEN.get(base)
                return _HANDLERS[base] if when is None or when(target) else None
        return None
    try:
        found = _HANDLERS.get(target)
    except TypeError:
        return None
    packet = getattr(target, "overloadpacket", None)  # aten.add.Tensor → aten.add
    return found if found is not None or packet is None else _HANDLERS.get(packet)


def lookup_resizer(module: nn.Module) -> Resizer | None:
    """Attribute fixer for a module (walks the class hierarchy)."""
    for base in type(module).__mro__:
        if base in _RESIZERS:
            return _RESIZERS[base]
    return None


def registered() -> list[Any]:
    """All registered keys (for docs and `analyze`)."""
    return list(_HANDLERS)
