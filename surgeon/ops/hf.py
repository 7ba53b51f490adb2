"""Hugging Face transformers: `Conv1D` (GPT-2's transposed Linear), the attributes attention and
MLP modules keep about their widths, and the shared `config`.

HF models are traced with torch.export; their attention is plain ATen ops (linear, view with
`-1` heads, transpose, `scaled_dot_product_attention`), which the generic handlers cover. What a
slim HF model additionally needs is for every number its `forward` reads to stay true:
`num_key_value_groups`, `split_size`, `all_head_size` … on each module (`resize_module`), and
`num_attention_heads`, `num_key_value_heads`, `intermediate_size` … on the config, which every
layer shares (`update_config`). A config can only describe uniform widths and, for models that
derive the head width from `hidden_size / num_attention_heads` (BERT), unchanged head counts;
otherwise `update_config` warns that `save_pretrained` cannot describe the slim model and
points to `surgeon.save`. Imported only when transformers is installed.
"""
from __future__ import annotations

import copy
from collections.abc import Callable

import torch
from torch import nn
from transformers import PreTrainedModel
from transformers.pytorch_utils import Conv1D

from ..core.labels import Labels
from ..util import warn
from .context import Ctx
from .registry import finisher, register, resizer

__all__ = ["conv1d", "resize_conv1d", "resize_module", "update_config", "head_counts"]

_Q = ("q_proj", "query", "q_lin", "q", "W_q")
_K = ("k_proj", "key", "k_lin", "k", "W_k")
_FUSED = ("c_attn", "qkv_proj", "query_key_value", "Wqkv", "qkv")
_UP = ("up_proj", "gate_up_proj", "fc1", "c_fc", "dense_h_to_4h", "lin1", "wi", "intermediate.dense")
_HEAD_WIDTH = ("head_dim", "attention_head_size", "head_size", "dim_per_head", "key_value_proj_dim")
_HEADS = ("num_heads", "num_attention_heads", "n_heads", "n_head")
_KV_HEADS = ("num_key_value_heads", "num_kv_heads")
_MLP_CONFIG = ("intermediate_size", "n_inner", "ffn_dim", "d_ff", "hidden_dim")


@register(Conv1D)
def conv1d(ctx: Ctx) -> Labels:
    """`x @ weight + bias` with weight [in, out]: output features (weight dim 1) are a space."""
    x = ctx.lab(ctx.arg(0, "x"))
    out = ctx.param("weight", 1, active=True)
    ctx.bind("bias", 0, out)
    ctx.bind("weight", 0, x[-1])
    return x.with_dim(-1, out)


@resizer(Conv1D)
def resize_conv1d(m: Conv1D, sizes: dict) -> None:
    m.nf = m.weight.shape[1]
    if hasattr(m, "nx"):
        m.nx = m.weight.shape[0]


def _width(m: nn.Module | None) -> int | None:
    """Output features of a Linear or a Conv1D."""
    if isinstance(m, Conv1D):
        return m.weight.shape[1]
    return m.weight.shape[0] if isinstance(m, nn.Linear) else None


def _child(m: nn.Module, names: tuple[str, ...]) -> nn.Module | None:
    for name in names:
        try:
            found = m.get_submodule(name)
        except AttributeError:
            continue
        if _width(found) is not None:
            return found
    return None


def _first_int(m: object, names: tuple[str, ...]) -> tuple[str, int] | None:
    return next(((n, v) for n in names if type(v := getattr(m, n, None)) is int), None)


def head_counts(m: nn.Module) -> tuple[int, int, int] | None:
    """(query heads, key/value heads, head width) of an attention module, read from its
    projections' widths; None when `m` is not one."""
    width = _first_int(m, _HEAD_WIDTH)
    if width is None or width[1] <= 0:
        return None
    d = width[1]
    q, k, fused = _child(m, _Q), _child(m, _K), _child(m, _FUSED)
    if q is not None and k is not None:
        return _width(q) // d, _width(k) // d, d
    if fused is None:
        return None
    total = _width(fused) // d
    kv = _first_int(m, _KV_HEADS)
    kv_heads = kv[1] if kv is not None else total // 3
    return total - 2 * kv_heads, kv_heads, d


def _set(m: object, names: tuple[str, ...], value: int) -> None:
    for name in names:
        if type(getattr(m, name, None)) is int:
            setattr(m, name, value)


@resizer(nn.Module)
def resize_module(m: nn.Module, sizes: dict) -> None:
    """A transformers attention or MLP module: the counts its `forward` reads follow its
    projections (other libraries' modules are left alone)."""
    if not type(m).__module__.startswith("transformers."):
        return
    counts = head_counts(m)
    if counts is not None:
        q, kv, d = counts
        _set(m, _HEADS, q)
        _set(m, _KV_HEADS, kv)
        _set(m, ("num_key_value_groups",), q // max(kv, 1))
        _set(m, ("all_head_size", "inner_dim"), q * d)
        if _child(m, ("c_attn",)) is not None:
            _set(m, ("split_size",), q * d)
    up = _child(m, _UP) or _child(m, _Q + _FUSED)
    if up is not None and _child(m, _UP) is not None:
        _set(m, ("intermediate_size",), _width(up) // (2 if _child(m, ("gate_up_proj",)) else 1))
    if up is not None:  # the embedding width it reads (prune_embed)
        _set(m, ("hidden_size",), up.weight.shape[0 if isinstance(up, Conv1D) else 1])


def _uniform(values: list[int]) -> int | None:
    return values[0] if values and len(set(values)) == 1 else None


def _changes(model: PreTrainedModel) -> tuple[dict[str, int], list[str]]:
    """Config fields the slim widths need, and why the config cannot hold them."""
    config, changes, problems = model.config, {}, []
    heads = [c for m in model.modules() if (c := head_counts(m)) is not None]
    if heads:
        q, kv, d = (_uniform([h[i] for h in heads]) for i in range(3))
        if q is None or kv is None or d is None:
            problems.append("its attention layers now differ in head counts")
        elif q != config.num_attention_heads or kv != getattr(config, "num_key_value_heads", kv):
            changes["num_attention_heads"] = q
            if hasattr(config, "num_key_value_heads"):
                changes["num_key_value_heads"] = kv
            if getattr(config, "head_dim", None) is None and config.hidden_size // q != d:
                changes["head_dim"] = d
    embeddings = model.get_input_embeddings()
    width = getattr(getattr(embeddings, "weight", None), "shape", (0, 0))[-1]
    if width and width != config.hidden_size:
        changes["hidden_size"] = width
    key = next((k for k in _MLP_CONFIG if hasattr(config, k)), None)
    fused = any(_child(m, ("gate_up_proj",)) is not None for m in model.modules())
    ups = [_width(u) // (2 if fused else 1) for m in model.modules() if (u := _child(m, _UP)) is not None]
    if key is not None and ups:
        width = _uniform(ups)
        if width is None:
            problems.append("its MLP layers now differ in width")
        elif width != getattr(config, key):
            changes[key] = width
    return changes, problems


def _mismatch(model: PreTrainedModel) -> str | None:
    """The first tensor whose shape a model built from `model.config` would get wrong."""
    try:
        with torch.device("meta"):
            fresh = type(model)(copy.deepcopy(model.config))
    except Exception as e:  # a config this class cannot build from
        return f"{type(model).__name__} cannot be built from it ({type(e).__name__}: {e})"
    want = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    for k, v in fresh.state_dict().items():
        if k in want and tuple(v.shape) != want[k]:
            return f"built from it, {k} would be {tuple(v.shape)} instead of {want[k]}"
    return None


def _refused(config: object) -> str | None:
    """Why transformers' own checks refuse the config (`save_pretrained` runs them), if they do."""
    try:
        getattr(config, "validate", lambda: None)()
    except Exception as e:  # the config's validators raise their own error types
        return f"transformers refuses it: {str(e).strip().splitlines()[-1].strip()}"
    return None


@finisher
def update_config(model: nn.Module, remember: Callable[[object], None]) -> None:
    """Write the slim widths into the model's config (keeping the original config as
    `model.surgeon_config` for `surgeon.save`), or warn that the config cannot hold them."""
    if not isinstance(model, PreTrainedModel):
        return
    changes, problems = _changes(model)
    if not changes and not problems:
        return
    remember(model)
    remember(model.config)
    model.surgeon_config = getattr(model, "surgeon_config", None) or model.config.to_dict()
    for k, v in changes.items():
        setattr(model.config, k, v)
    if not problems and (wrong := _refused(model.config) or _mismatch(model)) is not None:
        problems.append(wrong)
    if problems:
        warn(f"{type(model).__name__}.config cannot describe the slim model ({'; '.join(problems)}): "
             "save it with surgeon.save(slim, dir) and reload it with surgeon.load(dir), not with "
             "save_pretrained / from_pretrained")
