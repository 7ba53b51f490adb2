"""Per-layer knowledge, split by the library that defines the layer, found through one registry.

- `torch/`: PyTorch's own layers and functions (conv, linear, norms, shapes, attention …);
- `torchvision.py`, `timm.py`, `hf.py` (Hugging Face transformers): those libraries' layers,
  opaque ops and module attributes (loaded by `load_optional` once the library is imported:
  a model from a library means the library is loaded, and `import surgeon` stays light);
- `attention.py`: head-unit helpers the attention handlers share; `excite.py`: squeeze-excitation
  blocks as one call;
- `registry.py` (`register`, `resizer`, `lookup`) and `context.py` (`Ctx`, what a handler sees).

A new layer type's rules go in the module of the library that defines it.
"""
from . import torch
from .context import Ctx, Names
from .registry import load_optional, lookup, lookup_resizer, register, registered, resizer

__all__ = ["Ctx", "Names", "load_optional", "lookup", "lookup_resizer", "register", "registered",
           "resizer", "torch"]
