"""Trace stage: a model becomes graphs with every node's shape.

Two frontends feed the same later stages. torch.fx (the default): the model is traced in eval
mode, and in train mode too when a module traced through reads `self.training` (the graph is kept
when it differs: Inception's auxiliary head only exists in train mode),
shapes come from running the example inputs through each graph in eval mode under `no_grad`
with the heavy layers computing shapes only (`surgeon.shapes`), and the caller's train/eval
flags are restored afterwards. torch.export (`core.exported`), for
models fx cannot trace: one eval-mode graph of ATen ops, shapes from its fake tensors.
`frontend="auto"` tries fx first and export when fx fails; an error names both failures.
"""
from __future__ import annotations

import inspect
import traceback
import types
from collections.abc import Sequence
from functools import cache, partial
from typing import Any

import torch
from torch import fx, nn
from torch._subclasses.fake_tensor import FakeTensorMode
from torch.fx.passes.fake_tensor_prop import FakeTensorProp
from torch.utils._pytree import tree_leaves

from ..config import Config
from ..errors import InputError, TraceError
from ..layers.transformer import TRACED_FORWARD
from ..ops import load_optional, lookup
from ..shapes import shape_run
from ..stages import Stages
from ..util import Inputs, eval_mode, prefer_fake
from .exported import export_graph, tensor_meta

try:  # generates the graph's Python code only if it is called: the stages run it node by node
    from torch.fx._lazy_graph_module import _LazyGraphModule as _GraphModule
except ImportError:  # a torch without it: code generated up front (7-15 ms a graph)
    _GraphModule = fx.GraphModule

__all__ = ["trace", "traced", "positional", "is_leaf"]

_HOW_TO = (
    "To make it traceable: pass `leaf_modules=(TheModuleClass,)` so surgeon treats that module "
    "as one opaque call (its channels are then not pruned), or move the data-dependent Python "
    "control flow out of `forward` (see torch.fx's 'Limitations of Symbolic Tracing')."
)


def is_leaf(m: nn.Module, qualname: str, leaf_modules: Sequence[type | str] = ()) -> bool:
    """Whether both frontends keep `m` as one call: it has a handler (and is not one of the
    `nn.Transformer*` layers traced through), or the user named it in `leaf_modules`."""
    if any(qualname == x if isinstance(x, str) else isinstance(m, x) for x in leaf_modules):
        return True
    return type(m) not in TRACED_FORWARD and lookup(m) is not None


class _Tracer(fx.Tracer):
    """fx tracer that also treats `leaf_modules` as leaves and remembers where it failed."""

    def __init__(self, leaf_modules: Sequence[type | str] = ()) -> None:
        super().__init__()
        self.leaves = tuple(leaf_modules)
        self.failed_in = ""

    def is_leaf_module(self, m: nn.Module, qualname: str) -> bool:
        """Layers with a handler, the user's `leaf_modules`, and fx's own leaves (standard
        torch.nn layers) unless traced through."""
        if is_leaf(m, qualname, self.leaves):
            return True
        return type(m) not in TRACED_FORWARD and super().is_leaf_module(m, qualname)

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


def _where(exc: BaseException) -> str:
    frames = [f for f in traceback.extract_tb(exc.__traceback__) if "/torch/" not in f.filename]
    return f" at {frames[-1].filename}:{frames[-1].lineno} `{frames[-1].line}`" if frames else ""


def _trace_once(model: nn.Module, leaf_modules: Sequence[type | str], *,
                like: fx.GraphModule | None = None) -> fx.GraphModule | None:
    """The fx graph of `model` as it is now — None when it equals `like` (a GraphModule is
    built only for a graph that is kept)."""
    tracer = _Tracer(leaf_modules)
    before = set(vars(model))
    try:
        graph = tracer.trace(model)
        if like is not None and _same(like, graph):
            return None
        return _over(model, graph, {k: v for k, v in vars(model).items() if k not in before})
    except Exception as e:
        where = f" inside module '{tracer.failed_in}'" if tracer.failed_in else ""
        error = TraceError(f"torch.fx could not trace {type(model).__name__}{where}{_where(e)}: "
                           f"{str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__}. {_HOW_TO}")
        error.__cause__ = e
        raise _FxFailed(error) from e
    finally:  # fx stores tensors computed while tracing (`_tensor_constant0`) on the model
        for key in set(vars(model)) - before:
            delattr(model, key)


def _over(model: nn.Module, graph: fx.Graph, constants: dict[str, Any]) -> fx.GraphModule:
    """A GraphModule running `graph` on `model`'s own submodules, parameters and buffers
    (shared, not copied: fx's constructor rebuilds the dotted path of every node's target in a
    fresh module tree, 2.7 ms of efficientnet_b0's trace), holding the constants the tracer
    stored on the model."""
    gm = _GraphModule({}, fx.Graph(), type(model).__name__)
    for store in ("_modules", "_parameters", "_buffers"):
        getattr(gm, store).update(getattr(model, store))
    gm.__dict__.update(constants)
    for node in graph.nodes:  # a plain tensor attribute of the model itself (not a buffer)
        top = node.target.partition(".")[0] if node.op == "get_attr" else ""
        if top and not hasattr(gm, top):
            gm.__dict__[top] = getattr(model, top)
    gm.graph = graph
    return gm


def _same(a: fx.GraphModule, b: fx.Graph) -> bool:
    key = lambda g: [(n.op, str(n.target)) for n in g.nodes]  # noqa: E731
    return key(a.graph) == key(b)


def positional(model: nn.Module, inputs: Inputs) -> tuple[Any, ...]:
    """The inputs as positional arguments of `model.forward` (keyword arguments placed by name,
    defaults filled in between), as an fx graph's placeholders take them."""
    if not inputs.kwargs:
        return inputs.args
    try:
        bound = inspect.signature(model.forward).bind(*inputs.args, **inputs.kwargs)
    except TypeError as e:
        raise InputError(f"example_inputs do not fit {type(model).__name__}.forward: {e}") from e
    bound.apply_defaults()
    if bound.kwargs:
        raise InputError(f"{type(model).__name__}.forward takes **kwargs, which fx cannot trace; "
                         "pass frontend='export'")
    return bound.args


def trace(model: nn.Module, inputs: Inputs, *, leaf_modules: Sequence[type | str] = (),
          frontend: str = "auto") -> list[fx.GraphModule]:
    """Graphs of `model` with `tensor_meta` on every node: from fx (eval mode first, then train
    mode when it differs) or from torch.export (one eval-mode graph)."""
    load_optional()
    if frontend == "export":
        return [export_graph(model, inputs, lambda m, q: is_leaf(m, q, leaf_modules))]
    try:
        return _fx_graphs(model, inputs, leaf_modules)
    except _FxFailed as e:
        if frontend == "fx":
            raise e.error from e.error.__cause__
        try:
            return [export_graph(model, inputs, lambda m, q: is_leaf(m, q, leaf_modules))]
        except TraceError as x:
            raise TraceError(f"{e.error} — and {x}. Neither frontend can read this model; the "
                             "failing op or module is named above") from x


class _FxFailed(Exception):
    """fx could not trace the model (symbolic tracing, not a run on the inputs, failed)."""

    def __init__(self, error: TraceError) -> None:
        super().__init__(str(error))
        self.error = error


def _fx_graphs(model: nn.Module, inputs: Inputs, leaf_modules: Sequence[type | str]) -> list[fx.GraphModule]:
    try:
        args = positional(model, inputs)
    except InputError as e:
        raise _FxFailed(TraceError(str(e))) from e
    with eval_mode(model):
        graphs = [_trace_once(model, leaf_modules)]
        if _reads_training(model, leaf_modules):
            model.train()
            try:
                gm = _trace_once(model, leaf_modules, like=graphs[0])
            finally:
                model.eval()
            if gm is not None:
                graphs.append(gm)
        fake = prefer_fake(model)
        for i, gm in enumerate(graphs):
            _propagate_shapes(gm, args, train_only=i > 0, fake=fake)
    return graphs


def _names(code: types.CodeType) -> set[str]:
    """Attribute and global names a code object (and the functions nested in it) reads."""
    found = set(code.co_names)
    for const in code.co_consts:
        if isinstance(const, types.CodeType):
            found |= _names(const)
    return found


@cache
def _class_reads_training(cls: type) -> bool:
    """Whether a method of `cls` or of a base below `nn.Module` reads `training`."""
    for base in cls.__mro__:
        if base in (nn.Module, object) or base.__module__ == nn.Module.__module__:
            continue
        for f in vars(base).values():
            code = getattr(getattr(f, "__func__", f), "__code__", None)
            if code is not None and "training" in _names(code):
                return True
    return False


def _reads_training(model: nn.Module, leaf_modules: Sequence[type | str]) -> bool:
    """Whether the train-mode graph may differ from the eval-mode one: some module traced
    through (not a leaf) reads `self.training` (Inception's auxiliary head, stochastic depth).
    Tracing only the eval graph otherwise saves a trace."""
    return any(_class_reads_training(type(m)) for q, m in model.named_modules() if not is_leaf(m, q, leaf_modules))


def _fake_shapes(gm: fx.GraphModule, inputs: tuple[Any, ...]) -> bool:
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
        meta = tensor_meta(node.meta.pop("val", None))
        if meta is not None:
            node.meta["tensor_meta"] = meta
    return True


class _Shapes(fx.Interpreter):
    """fx's ShapeProp without its extras (a traceback printed on every failure, the memory-format
    search): `tensor_meta` on every node that gives tensors."""

    def fetch_attr(self, target: str) -> Any:
        """Submodules from the path index the Interpreter builds anyway: its own walk down each
        dotted path, through `Module.__getattr__`, cost efficientnet_b0's shape run 2-3 of 10 ms."""
        found = self.submodules.get(target)
        return found if found is not None else super().fetch_attr(target)

    def run_node(self, n: fx.Node) -> Any:
        """The node's op on its inputs (without the Interpreter's current-node bookkeeping for
        tracers, a tenth of a shape run), its `tensor_meta` recorded."""
        args, kwargs = self.fetch_args_kwargs_from_env(n)
        result = getattr(self, n.op)(n.target, args, kwargs)
        meta = tensor_meta(result)
        if meta is not None:
            n.meta["tensor_meta"] = meta
        return result


def _propagate_shapes(gm: fx.GraphModule, inputs: tuple[Any, ...], *, train_only: bool,
                      fake: bool) -> None:
    """Shapes on every node: with fake tensors for a model on meta when every op supports them,
    else from `shape_run` (heavy layers computing shapes only, and for real if that fails)."""
    if fake and _fake_shapes(gm, inputs):
        return
    try:
        with torch.no_grad():
            shape_run(gm, lambda: _Shapes(gm).run(*inputs))
    except Exception as e:
        shapes = ", ".join(str(tuple(t.shape)) for t in inputs if isinstance(t, torch.Tensor))
        which = ("its train-mode graph (layers that only run in training, such as an auxiliary "
                 "head, are sliced too, so they must run)") if train_only else gm.__class__.__name__
        raise TraceError(
            f"running {which} on example inputs of shape {shapes} failed: {e}. "
            "Pass example_inputs that the model's forward accepts in train and eval mode "
            "(Inception v3 needs 299×299)."
        ) from e


def traced(model: nn.Module, inputs: Inputs, config: Config, stages: Stages) -> tuple[list[fx.GraphModule], list[tuple[int, ...]]]:
    """The traced graphs, and the eval-mode output shapes seen while tracing."""
    with stages.stage("trace"):
        graphs = trace(model, inputs, leaf_modules=config.leaf_modules, frontend=config.frontend)
    out = next(n for n in reversed(graphs[0].graph.nodes) if n.op == "output")
    shapes = [tuple(n.meta["tensor_meta"].shape) for n in tree_leaves(out.args[0])
              if isinstance(n, fx.Node) and hasattr(n.meta.get("tensor_meta"), "shape")]
    return graphs, shapes
