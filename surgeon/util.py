"""The bottom floor: example inputs, eval mode, relative error, counting — used by every stage.

Nothing here imports another surgeon module except `errors`.
"""
from __future__ import annotations

import inspect
import sys
import warnings
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.utils._pytree import tree_leaves, tree_map
from torch.utils.flop_counter import FlopCounterMode, sdpa_flop_count

from .errors import InputError, TraceError

__all__ = ["Inputs", "as_inputs", "infer_inputs", "eval_mode", "outputs", "relative_error",
           "count_params", "count_macs", "flop_counter", "prefer_fake", "warn", "attribute",
           "parameters_on_meta", "model_inputs", "names_by_tensor"]


@dataclass(frozen=True)
class Inputs:
    """Example inputs of `model.forward`: positional `args` and keyword `kwargs`.

    Example:
        >>> Inputs((torch.zeros(1, 3),))(nn.Linear(3, 2)).shape
        torch.Size([1, 2])
    """

    args: tuple[Any, ...]
    kwargs: dict[str, Any] = field(default_factory=dict)

    def __call__(self, model: Callable[..., Any]) -> Any:
        """`model(*args, **kwargs)`."""
        return model(*self.args, **self.kwargs)

    def tensors(self) -> list[torch.Tensor]:
        """Every tensor among the inputs, in order."""
        return [t for t in tree_leaves((self.args, self.kwargs)) if isinstance(t, torch.Tensor)]

    def map(self, fn: Callable[[torch.Tensor], Any]) -> Inputs:
        """The inputs with `fn` applied to every tensor."""
        f = lambda v: fn(v) if isinstance(v, torch.Tensor) else v  # noqa: E731
        return Inputs(tree_map(f, self.args), tree_map(f, self.kwargs))

    def with_defaults(self, **defaults: Any) -> Inputs:
        """The inputs with keyword arguments added where the caller did not give them."""
        return Inputs(self.args, {**defaults, **self.kwargs})

    def describe(self) -> str:
        """Shapes and dtypes, for error messages."""
        def one(v: Any) -> str:
            return f"{tuple(v.shape)} {str(v.dtype).removeprefix('torch.')}" if isinstance(v, torch.Tensor) else repr(v)
        parts = [one(a) for a in self.args] + [f"{k}={one(v)}" for k, v in self.kwargs.items()]
        return ", ".join(parts)


def as_inputs(example_inputs: Any) -> Inputs:
    """Normalise a tensor, a sequence of tensors (positional) or a dict (keyword arguments, as
    Hugging Face models take `input_ids`, `attention_mask`, …) to `Inputs`.

    Example:
        >>> as_inputs(torch.zeros(1, 3)).args[0].shape
        torch.Size([1, 3])
    """
    if isinstance(example_inputs, Inputs):
        return example_inputs
    if isinstance(example_inputs, torch.Tensor):
        return Inputs((example_inputs,))
    if isinstance(example_inputs, Mapping):
        if not example_inputs or not all(isinstance(k, str) for k in example_inputs):
            raise InputError("example_inputs as a dict must map forward's argument names to "
                             "values, e.g. {'input_ids': ids, 'attention_mask': mask}")
        return Inputs((), dict(example_inputs))
    inputs = tuple(example_inputs) if isinstance(example_inputs, (tuple, list)) else (example_inputs,)
    if not inputs or not all(isinstance(x, torch.Tensor) for x in inputs):
        kinds = [type(x).__name__ for x in inputs]
        raise InputError(
            f"example_inputs must be a tensor, a non-empty tuple of tensors or a dict of keyword "
            f"arguments, got {kinds}; pass the inputs of model.forward, e.g. "
            "torch.randn(1, 3, 224, 224)"
        )
    return Inputs(inputs)


def infer_inputs(model: nn.Module, *, size: int = 224) -> Inputs:
    """A 1×C×size×size image batch for models whose first layer is a Conv2d (299 for models
    with an auxiliary head, as Inception v3 / GoogLeNet, whose train-mode branch needs it)."""
    first = next((m for m in model.modules() if isinstance(m, (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Linear, nn.Embedding))), None)
    if not isinstance(first, nn.Conv2d):
        kind = type(first).__name__ if first is not None else "no conv/linear layer"
        raise TraceError(
            f"cannot infer example inputs for {type(model).__name__} (first layer: {kind}); "
            "pass example_inputs=..., e.g. surgeon.slim(model, 0.5, torch.randn(1, 16)), or a "
            "dict such as {'input_ids': ids} for a Hugging Face model"
        )
    p = next(model.parameters())
    if getattr(model, "aux_logits", False):
        size = max(size, 299)
    return Inputs((torch.randn(1, first.in_channels, size, size, dtype=p.dtype, device=p.device),))


def model_inputs(model: nn.Module, example_inputs: Any) -> Inputs:
    """The example inputs; a decoder taking `use_cache` gets `use_cache=False` (one graph
    without a KV cache; the slim model still runs with one)."""
    if not isinstance(model, nn.Module):
        raise InputError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    inputs = infer_inputs(model) if example_inputs is None else as_inputs(example_inputs)
    params = list(inspect.signature(model.forward).parameters)
    if "use_cache" in params and params.index("use_cache") >= len(inputs.args):
        inputs = inputs.with_defaults(use_cache=False)
    return inputs


@contextmanager
def eval_mode(model: nn.Module) -> Iterator[nn.Module]:
    """Put every submodule in eval mode, then restore each one's own train/eval flag (a model
    already in eval mode is left alone: flags are set only where they change).

    Example:
        >>> with eval_mode(model), torch.no_grad():
        ...     y = model(x)
    """
    modes = {m: m.training for m in model.modules()}
    if any(modes.values()):
        model.eval()
    try:
        yield model
    finally:
        for module, training in modes.items():
            if module.training != training:
                module.training = training


def outputs(model: nn.Module, inputs: Inputs) -> list[torch.Tensor]:
    """Every output tensor of an eval-mode forward (dicts, tuples and model outputs flattened)."""
    with eval_mode(model), torch.no_grad():
        return [t for t in tree_leaves(inputs(model)) if isinstance(t, torch.Tensor)]


def relative_error(actual: torch.Tensor, expected: torch.Tensor) -> float:
    """Largest absolute difference divided by the largest magnitude of `expected`.

    Example:
        >>> relative_error(torch.tensor([1.0, 2.0]), torch.tensor([1.0, 2.002]))  # ≈ 1e-3
    """
    actual, expected = actual.double(), expected.double()
    scale = expected.abs().max().clamp_min(torch.finfo(torch.float64).tiny)
    return float((actual - expected).abs().max() / scale) if expected.numel() else 0.0


def count_params(model: nn.Module) -> int:
    """Number of parameters, each shared parameter counted once.

    Example:
        >>> count_params(nn.Linear(3, 2))
        8
    """
    return sum(p.numel() for p in model.parameters())


def prefer_fake(model: nn.Module) -> bool:
    """Whether shape-only runs of `model` need fake tensors: its parameters are on the meta
    device (its `forward` may read a value, which fake tensors refuse only when tracing could
    not go on without it). Other models run with their heavy layers on meta (`shapes.shapes_only`),
    which costs less than fake-tensor dispatch at every size."""
    return any(p.is_meta for p in model.parameters())


def _cpu_attention_flops(query: torch.Size, key: torch.Size, value: torch.Size, *args, out_shape=None, **kwargs) -> int:
    """The counter knows the GPU attention kernels; the CPU one costs the same."""
    return sdpa_flop_count(query, key, value)


def flop_counter() -> FlopCounterMode:
    """A silent `FlopCounterMode` that also counts the CPU attention kernel."""
    return FlopCounterMode(display=False, custom_mapping={
        torch.ops.aten._scaled_dot_product_flash_attention_for_cpu: _cpu_attention_flops,
    })


def count_macs(model: nn.Module, example_inputs: Any) -> int:
    """Multiply-accumulates of one eval-mode forward pass, from `FlopCounterMode`.

    Example:
        >>> count_macs(nn.Linear(3, 2), torch.randn(1, 3))
        6
    """
    inputs = as_inputs(example_inputs)
    counter = flop_counter()
    fastpath = torch.backends.mha.get_fastpath_enabled()
    torch.backends.mha.set_fastpath_enabled(False)  # the fused MHA kernel is invisible to the counter
    try:
        with eval_mode(model), torch.no_grad(), counter:
            inputs(model)
    finally:
        torch.backends.mha.set_fastpath_enabled(fastpath)
    return counter.get_total_flops() // 2


def warn(message: str) -> None:
    """A `UserWarning` attributed to the caller's code, outside the surgeon package."""
    package, level, frame = str(Path(__file__).parent), 2, sys._getframe(1)
    while frame is not None and frame.f_code.co_filename.startswith(package):
        frame, level = frame.f_back, level + 1
    warnings.warn(message, UserWarning, stacklevel=level)


def attribute(model: nn.Module, target: str) -> Any:
    """What a graph's `get_attr` node names on `model` (a dotted path); None for a constant the
    tracer made up."""
    mod, _, name = target.rpartition(".")
    try:
        return getattr(model.get_submodule(mod) if mod else model, name)
    except AttributeError:
        return None


@contextmanager
def parameters_on_meta() -> Iterator[None]:
    """While building a model, every parameter registered goes to the meta device (as
    accelerate's `init_empty_weights` does); buffers stay where they are made."""
    register = nn.Module.register_parameter

    def on_meta(self: nn.Module, name: str, param: nn.Parameter | None) -> None:
        if param is not None and not param.is_meta:
            param = nn.Parameter(param.to("meta"), requires_grad=param.requires_grad)
        register(self, name, param)

    nn.Module.register_parameter = on_meta
    try:
        yield
    finally:
        nn.Module.register_parameter = register


def names_by_tensor(model: nn.Module, *, buffers: bool = True) -> list[list[str]]:
    """Every name of each parameter (and buffer) of `model`, one list per tensor: tied weights
    have several."""
    found: dict[int, list[str]] = {}
    tensors = [*model.named_parameters(remove_duplicate=False),
               *(model.named_buffers(remove_duplicate=False) if buffers else ())]
    for name, t in tensors:
        found.setdefault(id(t), []).append(name)
    return list(found.values())
