"""Handlers for PyTorch's own layers, functions and tensor methods, one module per family."""
from . import aten, conv, index, linear, matmul, mha, norm, pointwise, reduce, shape, transformer

__all__ = ["aten", "conv", "index", "linear", "matmul", "mha", "norm", "pointwise", "reduce", "shape", "transformer"]
