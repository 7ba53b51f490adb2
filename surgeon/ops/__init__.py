"""Per-layer knowledge: one handler module per family, all found through the registry."""
from . import conv, index, linear, matmul, norm, pointwise, reduce, shape, vision
from .context import Ctx, Names
from .registry import lookup, lookup_resizer, register, registered, resizer

__all__ = ["Ctx", "Names", "lookup", "lookup_resizer", "register", "registered", "resizer",
           "conv", "index", "linear", "matmul", "norm", "pointwise", "reduce", "shape", "vision"]
