"""Optional packages the command line uses (timm, transformers, matplotlib …): imported when
needed, or a one-line error saying how to install them."""
from __future__ import annotations

import importlib
from types import ModuleType

from ..deploy.export import MissingExtraError

__all__ = ["optional"]


def optional(name: str, install: str) -> ModuleType:
    """Import an optional package, or raise `MissingExtraError` saying how to install it.

    Example:
        >>> timm = optional("timm", "pip install timm")
    """
    try:
        return importlib.import_module(name)
    except ImportError as e:
        raise MissingExtraError(f"{name} is not installed: {install}") from e
