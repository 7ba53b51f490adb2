"""Frontend: trace a model with torch.fx and record every node's shape.

The model is traced in both train and eval mode when their graphs differ (Inception's auxiliary
head only exists in train mode), shapes come from running the example inputs through each graph
in eval mode under `no_grad`, and the caller's train/eval flags are restored afterwards.
"""
from __future__ import annotations

import traceback
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from functools import partial
from typing import Any

import torch
from torch import fx, nn
from torch._subclasses.fake_tensor import FakeTensorMode
from torch.fx.node import map_aggregate
from torch.fx.passes.fake_tensor_prop import FakeTensorProp
from torch.fx.passes.shape_prop import ShapeProp, _extract_tensor_metadata

from .errors import InputError, TraceError
from .layers.transformer import TRACED_FORWARD
from .ops import lookup

__all__ = ["as_inputs", "infer_inputs", "trace", "eval_mode", "prefer_fake"]

FAKE_ABOVE = 50_000_000
"""Parameter count above which shapes come from fake tensors: a real forward of a large model
costs more than fake-tensor dispatch (which is slower than a real run on small models)."""


def prefer_fake(model: nn.Module) -> bool:
    """Whether shape-only runs of `model` should use fake tensors."""
    return sum(p.numel() for p in model.parameters()) > FAKE_ABOVE

_HOW_TO = (
    "To make it traceable: pass `leaf_modules=(TheModuleClass,)` so surgeon treats that module "
    "as one opaque call (its channels are then not pruned), or move the data-dependent Python "
    "control flow out of `forward` (see torch.fx's 'Limitations of Symbolic Tracing')."
)


class _Tracer(fx.Tracer):
    """fx tracer that also treats `leaf_modules` as leaves and remembers where it failed."""

    def __init__(self, leaf_modules: Sequence[type | str] = ()) -> None:
        super().__init__()
        self.leaves = tuple(leaf_modules)
        self.failed_in = ""

    def is_leaf_module(self, m: nn.Module, qualname: str) -> bool:
        """Standard torch.nn layers, layers with a registered handler (timm `Attention` …),
        and the user's `leaf_modules` (by class or name)."""
        if any(qualname == x if isinstance(x, str) else isinstance(m, x) for x in self.leaves):
            return True
        if type(m) in TRACED_FORWARD:
            return False
        if not type(m).__module__.startswith("torch.nn") and lookup(m) is not None:
            return True
        return super().is_leaf_module(m, qualname)

    def call_module(self, m: nn.Module, forward: Any, args: Any, kwargs: Any) -> Any:
        """Trace a submodule (`nn.Transformer*` through their composed path, see
        `surgeon.layers.transformer`); on failure remember the innermost module that failed."""
        if type(m) in TRACED_FORWARD and not self.is_leaf_module(m, self.path_of_module(m)):
            forward = partial(TRACED_FORWARD[type(m)], m)
        try:
            return super().call_module(m, forward, args, kwargs)
        except Exception:
            self.failed_in = self.failed_in or self.path_of_module(m)
            raise


@contextmanager
def eval_mode(model: nn.Module) -> Iterator[nn.Module]:
    """Put every submodule in eval mode, then restore each one's own train/eval flag.

    Example:
        >>> with eval_mode(model), torch.no_grad():
        ...     y = model(x)
    """
    modes = {m: m.training for m in model.modules()}
    model.eval()
    try:
        yield model
    finally:
        for module, training in modes.items():
            module.training = training


def as_inputs(example_inputs: Any) -> tuple[torch.Tensor, ...]:
    """Normalise a tensor or a sequence of tensors to a tuple of positional inputs.

    Example:
        >>> as_inputs(torch.zeros(1, 3))[0].shape
        torch.Size([1, 3])
    """
    if isinstance(example_inputs, torch.Tensor):
        return (example_inputs,)
    inputs = tuple(example_inputs) if isinstance(example_inputs, (tuple, list)) else (example_inputs,)
    if not inputs or not all(isinstance(x, torch.Tensor) for x in inputs):
        kinds = [type(x).__name__ for x in inputs]
        raise InputError(
            f"example_inputs must be a tensor or a non-empty tuple of tensors, got {kinds}; "
            "pass the positional inputs of model.forward, e.g. torch.randn(1, 3, 224, 224)"
        )
    return inputs


def infer_inputs(model: nn.Module, *, size: int = 224) -> tuple[torch.Tensor, ...]:
    """A 1×C×size×size image batch for models whose first layer is a Conv2d (299 for models
    with an auxiliary head, as Inception v3 / GoogLeNet, whose train-mode branch needs it)."""
    first = next((m for m in model.modules() if isinstance(m, (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Linear, nn.Embedding))), None)
    if not isinstance(first, nn.Conv2d):
        kind = type(first).__name__ if first is not None else "no conv/linear layer"
        raise TraceError(
            f"cannot infer example inputs for {type(model).__name__} (first layer: {kind}); "
            "pass example_inputs=..., e.g. surgeon.slim(model, 0.5, torch.randn(1, 16))"
        )
    p = next(model.parameters())
    if getattr(model, "aux_logits", False):
        size = max(size, 299)
    return (torch.randn(1, first.in_channels, size, size, dtype=p.dtype, device=p.device),)


def _where(exc: BaseException) -> str:
    frames = [f for f in traceback.extract_tb(exc.__traceback__) if "/torch/" not in f.filename]
    return f" at {frames[-1].filename}:{frames[-1].lineno} `{frames[-1].line}`" if frames else ""


def _trace_once(model: nn.Module, leaf_modules: Sequence[type | str]) -> fx.GraphModule:
    tracer = _Tracer(leaf_modules)
    try:
        graph = tracer.trace(model)
    except Exception as e:
        where = f" inside module '{tracer.failed_in}'" if tracer.failed_in else ""
        raise TraceError(
            f"torch.fx could not trace {type(model).__name__}{where}{_where(e)}: {e}. {_HOW_TO}"
        ) from e
    return fx.GraphModule(tracer.root, graph, type(model).__name__)


def _same(a: fx.GraphModule, b: fx.GraphModule) -> bool:
    key = lambda g: [(n.op, str(n.target)) for n in g.graph.nodes]  # noqa: E731
    return key(a) == key(b)


def trace(model: nn.Module, inputs: tuple[torch.Tensor, ...], *,
          leaf_modules: Sequence[type | str] = ()) -> list[fx.GraphModule]:
    """Graphs of `model` (eval mode first, then train mode when it differs) with `tensor_meta`."""
    with eval_mode(model):
        graphs = []
        for training in (False, True):
            model.train(training)
            gm = _trace_once(model, leaf_modules)
            if not graphs or not _same(graphs[0], gm):
                graphs.append(gm)
        model.eval()
        fake = prefer_fake(model)
        for i, gm in enumerate(graphs):
            _propagate_shapes(gm, inputs, train_only=i > 0, fake=fake)
    return graphs


def _tensor_meta(value: Any) -> Any:
    """ShapeProp-style `tensor_meta` of a (nested) fake-tensor value; None without tensors."""
    found = False

    def extract(v: Any) -> Any:
        nonlocal found
        if isinstance(v, torch.Tensor):
            found = True
            return _extract_tensor_metadata(v)
        return v

    meta = map_aggregate(value, extract)
    return meta if found else None


def _fake_shapes(gm: fx.GraphModule, inputs: tuple[torch.Tensor, ...]) -> bool:
    """`tensor_meta` from a fake-tensor run; False (and nothing left behind) if an op lacks a
    fake kernel."""
    try:
        with torch.no_grad():
            FakeTensorProp(gm, FakeTensorMode(allow_non_fake_inputs=True)).propagate(*inputs)
    except Exception:  # an op without a fake-tensor kernel: the caller runs it for real
        for node in gm.graph.nodes:
            node.meta.pop("val", None)
        return False
    for node in gm.graph.nodes:
        meta = _tensor_meta(node.meta.pop("val", None))
        if meta is not None:
            node.meta["tensor_meta"] = meta
    return True


def _propagate_shapes(gm: fx.GraphModule, inputs: tuple[torch.Tensor, ...], *, train_only: bool,
                      fake: bool) -> None:
    """Shapes on every node: with fake tensors (no arithmetic) for large models when every op
    supports them, else by running the graph for real."""
    if fake and _fake_shapes(gm, inputs):
        return
    try:
        with torch.no_grad():
            ShapeProp(gm).propagate(*inputs)
    except Exception as e:
        shapes = ", ".join(str(tuple(t.shape)) for t in inputs if isinstance(t, torch.Tensor))
        which = ("its train-mode graph (layers that only run in training, such as an auxiliary "
                 "head, are sliced too, so they must run)") if train_only else gm.__class__.__name__
        raise TraceError(
            f"running {which} on example inputs of shape {shapes} failed: {e}. "
            "Pass example_inputs that the model's forward accepts in train and eval mode "
            "(Inception v3 needs 299×299)."
        ) from e
