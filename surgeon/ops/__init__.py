"""Per-layer knowledge: one handler module per family, all found through the registry."""
from . import attention, conv, index, linear, matmul, mha, norm, pointwise, reduce, shape, transformer, vision
from .context import Ctx, Names, Options
from .registry import lookup, lookup_resizer, register, registered, resizer

try:
    from . import tv_attention
except ImportError:  # torchvision is optional
    tv_attention = None

__all__ = ["Ctx", "Names", "Options", "lookup", "lookup_resizer", "register", "registered", "resizer",
           "attention", "conv", "index", "linear", "matmul", "mha", "norm", "pointwise", "reduce", "shape",
           "transformer", "vision"]
