"""Handler registry: one handler per layer type, function or tensor method.

A *propagation* handler takes a `Ctx` for one fx node and returns the output `Labels`, relating
input and output atoms through the context (union / freeze / bind a parameter). A *resizer*
fixes a rebuilt module's size attributes so that its own `forward` still runs.

Example::

    @register(nn.ReLU, torch.relu, "relu")
    def pointwise(ctx: Ctx) -> Labels:
        return ctx.broadcast_merge(ctx.tensor_args())

Keys are module classes (matched exactly, or through a base class whose `forward` the subclass
does not override), callables (`call_function` targets) or strings (`call_method` names).
"""
from __future__ import annotations

from collections.abc import Callable
from typing import Any

from torch import nn

__all__ = ["register", "resizer", "lookup", "lookup_resizer", "registered"]

Handler = Callable[..., Any]
Resizer = Callable[[nn.Module, dict], None]

_HANDLERS: dict[Any, Handler] = {}
_RESIZERS: dict[type, Resizer] = {}


def register(*keys: Any) -> Callable[[Handler], Handler]:
    """Register a propagation handler for module types, functions or method names."""

    def deco(fn: Handler) -> Handler:
        for key in keys:
            _HANDLERS[key] = fn
        return fn

    return deco


def resizer(*types: type) -> Callable[[Resizer], Resizer]:
    """Register the attribute fixer `fn(module, sizes)` for module types (and subclasses)."""

    def deco(fn: Resizer) -> Resizer:
        for t in types:
            _RESIZERS[t] = fn
        return fn

    return deco


def lookup(target: Any) -> Handler | None:
    """Handler for a module instance, a function or a method name; None if unknown."""
    if isinstance(target, nn.Module):
        cls = type(target)
        for base in cls.__mro__:
            if base is not cls and getattr(base, "forward", None) is not cls.forward:
                return None
            if base in _HANDLERS:
                return _HANDLERS[base]
        return None
    try:
        return _HANDLERS.get(target)
    except TypeError:
        return None


def lookup_resizer(module: nn.Module) -> Resizer | None:
    """Attribute fixer for a module (walks the class hierarchy)."""
    for base in type(module).__mro__:
        if base in _RESIZERS:
            return _RESIZERS[base]
    return None


def registered() -> list[Any]:
    """All registered keys (for docs and `analyze`)."""
    return list(_HANDLERS)
