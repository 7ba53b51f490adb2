"""The torch.export frontend, for models torch.fx cannot trace (Hugging Face transformers, Python
branches on shapes).

`torch.export.export(model, args, kwargs, strict=False)` records ATen ops with their shapes
(fake tensors), parameters as `get_attr` nodes named as the model names them, and for every op
the stack of modules that made it (`nn_module_stack`), so the plan, rebuild and verify stages
work unchanged. Layers with a handler (and the user's `leaf_modules`) stay single calls, as
under fx: while exporting, their `forward` goes through one custom op (`surgeon::leaf`) whose
fake kernel runs the module's own forward; each such node is then turned back into a
`call_module` node with the module's own arguments, so one set of handlers serves both
frontends.

Static shapes: export bakes every size `forward` reads into a literal, so handlers are told
(`node.meta["baked"]`) that a literal size may have been computed from a tensor.
"""
from __future__ import annotations

import itertools
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import fx, nn
from torch.fx.node import map_aggregate
from torch.fx.passes.shape_prop import TensorMetadata, _extract_tensor_metadata
from torch.utils._pytree import TreeSpec, tree_flatten, tree_unflatten

from ..errors import TraceError
from ..util import Inputs, eval_mode

__all__ = ["export_graph", "tensor_meta"]


@dataclass
class _Call:
    """One call of a leaf module during export: its arguments with the tensors taken out."""

    module: nn.Module
    forward: Callable[..., Any]
    flat: list[Any]
    spec: TreeSpec
    tensor_at: list[int]
    out: list[Any] = field(default_factory=list)
    out_spec: TreeSpec | None = None

    def run(self, tensors: Sequence[torch.Tensor]) -> list[torch.Tensor]:
        flat = list(self.flat)
        for i, t in zip(self.tensor_at, tensors):
            flat[i] = t
        args, kwargs = tree_unflatten(flat, self.spec)
        self.out, self.out_spec = tree_flatten(self.forward(*args, **kwargs))
        return [t.clone() for t in self.out if isinstance(t, torch.Tensor)]


_CALLS: dict[int, _Call] = {}
_KEYS = itertools.count()


@torch.library.custom_op("surgeon::leaf", mutates_args=())
def _leaf(tensors: list[torch.Tensor], key: int) -> list[torch.Tensor]:
    """A leaf module's forward as one opaque op (see the module docstring)."""
    return _CALLS[key].run(tensors)


@_leaf.register_fake
def _leaf_fake(tensors: list[torch.Tensor], key: int) -> list[torch.Tensor]:
    return _CALLS[key].run(tensors)


def _opaque_forward(module: nn.Module, forward: Callable[..., Any], keys: list[int]) -> Callable[..., Any]:
    def run(*args: Any, **kwargs: Any) -> Any:
        flat, spec = tree_flatten((args, kwargs))
        at = [i for i, v in enumerate(flat) if isinstance(v, torch.Tensor)]
        key = next(_KEYS)
        keys.append(key)
        call = _CALLS[key] = _Call(module, forward, flat, spec, at)
        outs = iter(_leaf([flat[i] for i in at], key))
        return tree_unflatten([next(outs) if isinstance(v, torch.Tensor) else v for v in call.out], call.out_spec)

    return run


def _metadata(t: torch.Tensor) -> TensorMetadata:
    """ShapeProp's record of a tensor, without the memory-format search no stage reads (about
    a sixth of the shape run's time on efficientnet_b0)."""
    if t.is_quantized:
        return _extract_tensor_metadata(t)
    return TensorMetadata(t.shape, t.dtype, t.requires_grad, t.stride(), None, False, {})


def tensor_meta(value: Any) -> Any:
    """ShapeProp-style `tensor_meta` of a (nested) real or fake value; None without tensors."""
    found = False

    def extract(v: Any) -> Any:
        nonlocal found
        if isinstance(v, torch.Tensor):
            found = True
            return _metadata(v)
        return v

    meta = map_aggregate(value, extract)
    return meta if found else None


def _outermost(model: nn.Module, is_leaf: Callable[[nn.Module, str], bool]) -> list[tuple[str, nn.Module]]:
    """(path, module) of every leaf not inside another leaf."""
    found: list[tuple[str, nn.Module]] = []
    for path, m in model.named_modules():
        if path and not any(path.startswith(p + ".") for p, _ in found) and is_leaf(m, path):
            found.append((path, m))
    return found


def _as_module_calls(gm: fx.GraphModule, keys: list[int], paths: dict[int, str]) -> None:
    """Turn every `surgeon::leaf` node back into a `call_module` node with the module's own
    arguments; its output labels are flattened to the op's tensor list (`flat_outputs`)."""
    for node in list(gm.graph.nodes):
        if node.op == "call_module" and node.target not in paths.values():
            gm.graph.erase_node(node)  # export's `_guards_fn`
        if node.op != "call_function" or node.target is not torch.ops.surgeon.leaf.default:
            continue
        tensors, key = node.args
        call = _CALLS[key]
        flat, nodes = list(call.flat), iter(tensors)
        for i in call.tensor_at:
            flat[i] = next(nodes)
        args, kwargs = tree_unflatten(flat, call.spec)
        node.op, node.target, node.args, node.kwargs = "call_module", paths[id(call.module)], tuple(args), kwargs
        out = [_metadata(v) if isinstance(v, torch.Tensor) else v for v in call.out]
        node.meta["tensor_meta"] = tree_unflatten(out, call.out_spec)
        node.meta["flat_outputs"] = True


def export_graph(model: nn.Module, inputs: Inputs, is_leaf: Callable[[nn.Module, str], bool]) -> fx.GraphModule:
    """The eval-mode graph of `model` from `torch.export`, leaves as `call_module` nodes, every
    node with `tensor_meta` and marked `baked` (literal sizes may come from tensors)."""
    leaves = _outermost(model, is_leaf)
    own = [m.__dict__.get("forward") for _, m in leaves]
    keys: list[int] = []
    try:
        with eval_mode(model):
            for _, m in leaves:
                m.forward = _opaque_forward(m, m.forward, keys)
            try:
                program = torch.export.export(model, inputs.args, inputs.kwargs, strict=False)
            finally:
                for (_, m), forward in zip(leaves, own):
                    del m.forward
                    if forward is not None:
                        m.forward = forward
        gm = program.module()
        _as_module_calls(gm, keys, {id(m): p for p, m in leaves})
    except Exception as e:
        raise TraceError(f"torch.export could not trace {type(model).__name__} on inputs "
                         f"({inputs.describe()}): {type(e).__name__}: {str(e).strip().splitlines()[0]}") from e
    finally:
        for key in keys:
            _CALLS.pop(key, None)
    for node in gm.graph.nodes:
        node.meta["baked"] = True
        if "tensor_meta" not in node.meta and (meta := tensor_meta(node.meta.get("val"))) is not None:
            node.meta["tensor_meta"] = meta
    return gm
