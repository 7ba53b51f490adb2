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

import warnings
from collections.abc import Callable

from torch import nn
from transformers import PreTrainedModel
from transformers.pytorch_utils import Conv1D

from ..core.labels import Labels
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
        _set(m, _HEADS, sizes.get(_first_int(m, _HEADS)[0], q) if _first_int(m, _HEADS) else q)
        _set(m, _KV_HEADS, kv)
        _set(m, ("num_key_value_groups",), q // max(kv, 1))
        _set(m, ("all_head_size", "inner_dim"), q * d)
        if _child(m, ("c_attn",)) is not None:
            _set(m, ("split_size",), q * d)
    up = _child(m, _UP)
    if up is not None:
        _set(m, ("intermediate_size",), _width(up) // (2 if _child(m, ("gate_up_proj",)) else 1))


def _uniform(values: list[int]) -> int | None:
    return values[0] if values and len(set(values)) == 1 else None


@finisher
def update_config(model: nn.Module, remember: Callable[[object], None]) -> None:
    """Write the slim widths into the model's config, or warn that it cannot hold them."""
    if not isinstance(model, PreTrainedModel):
        return
    config = model.config
    heads = [c for m in model.modules() if (c := head_counts(m)) is not None]
    problems = []
    changes: dict[str, int] = {}
    if heads:
        q, kv, d = (_uniform([h[i] for h in heads]) for i in range(3))
        if q is None or kv is None:
            problems.append("attention layers keep different head counts")
        elif q != getattr(config, "num_attention_heads", q) or kv != getattr(config, "num_key_value_heads", kv):
            changes["num_attention_heads"] = q
            if hasattr(config, "num_key_value_heads"):
                changes["num_key_value_heads"] = kv
            if getattr(config, "head_dim", None) is None and config.hidden_size // q != d:
                problems.append(f"{type(config).__name__} derives the head width from hidden_size / "
                                "num_attention_heads, which no longer holds")
    key = next((k for k in _MLP_CONFIG if hasattr(config, k)), None)
    ups = [_width(u) for m in model.modules() if (u := _child(m, _UP)) is not None and m is not model]
    if key is not None and ups:
        width = _uniform(ups)
        if width is None:
            problems.append("MLP layers keep different widths")
        elif width != getattr(config, key):
            changes[key] = width // (2 if any(_child(m, ("gate_up_proj",)) for m in model.modules()) else 1)
    if changes:
        remember(config)
        for k, v in changes.items():
            setattr(config, k, v)
    if problems:
        warnings.warn(f"{type(model).__name__}.config cannot describe the slim model ({'; '.join(problems)}): "
                      "save it with surgeon.save(slim, dir) and reload it with surgeon.load(dir), "
                      "not with save_pretrained / from_pretrained", stacklevel=2)
