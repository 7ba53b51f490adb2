"""Per-layer knowledge: one handler module per family, all found through the registry."""
from . import attention, conv, mha, index, linear, matmul, norm, pointwise, reduce, shape, vision
from .context import Ctx, Names, Options
from .registry import lookup, lookup_resizer, register, registered, resizer

try:
    from . import tv_attention
except ImportError:  # torchvision is optional
    tv_attention = None

__all__ = ["Ctx", "Names", "Options", "lookup", "lookup_resizer", "register", "registered", "resizer",
           "attention", "conv", "mha", "index", "linear", "matmul", "norm", "pointwise", "reduce", "shape", "vision"]
