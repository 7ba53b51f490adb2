"""The model a checkpoint describes, built without its weights: every tensor on the `meta` device
(shapes only, nothing allocated or initialised), each parameter in the dtype its checkpoint
tensor has; the buffers the model computes when it is built (rotary frequencies, which no
checkpoint holds) are kept aside with their values for calibration."""
from __future__ import annotations

import torch
from torch import nn

from ..errors import InputError
from ..util import names_by_tensor, parameters_on_meta, warn
from .shards import Checkpoint

__all__ = ["build", "tensor_names", "meta_inputs"]


def build(checkpoint: Checkpoint) -> tuple[nn.Module, dict[str, torch.Tensor], dict[str, str]]:
    """The checkpoint's model class built from its `config.json` on `meta`, in eval mode —
    checked against the checkpoint's tensors —, the values of its buffers, and where each of its
    tensors is in the checkpoint (`tensor_names`)."""
    import transformers

    config = dict(checkpoint.config)
    kind = config.get("model_type")
    if kind not in transformers.CONFIG_MAPPING:
        raise InputError(f"{checkpoint.directory}/config.json has model_type {kind!r}, which this transformers "
                         f"({transformers.__version__}) does not know")
    hf_config = transformers.CONFIG_MAPPING[kind].from_dict(config)
    arch = (config.get("architectures") or [None])[0]
    cls = getattr(transformers, arch, None) if arch else transformers.AutoModelForCausalLM
    if cls is None:
        raise InputError(f"{checkpoint.directory}/config.json names architecture {arch!r}, which transformers lacks")
    with parameters_on_meta():
        model = cls(hf_config) if arch else cls.from_config(hf_config)
    stored = tensor_names(model, checkpoint)
    _check(model, checkpoint, stored)
    buffers = dict(model.named_buffers())
    for name, p in model.named_parameters():
        p.data = p.data.to(checkpoint.entries[stored[name]].dtype)
    return model.to("meta").eval(), buffers, stored


def tensor_names(model: nn.Module, checkpoint: Checkpoint) -> dict[str, str]:
    """Each name of each persistent tensor of `model` → the name its values have in the
    checkpoint (a tied weight is saved under one of its names)."""
    persistent = set(model.state_dict())
    renamed = _renamed(model, checkpoint)
    found = {}
    for names in names_by_tensor(model):
        if not persistent & set(names):
            continue
        stored = next((renamed[n] for n in names if n in renamed), None)
        if stored is not None:
            found.update(dict.fromkeys(names, stored))
    return found


def _renamed(model: nn.Module, checkpoint: Checkpoint) -> dict[str, str]:
    """Model name → checkpoint name, by the renamings `from_pretrained` applies (GPT-NeoX saves
    `lm_head` as `embed_out`); a checkpoint whose tensors must be merged or split to fit the
    model (`WeightConverter`s: fused MoE experts) is refused."""
    try:
        from transformers.conversion_mapping import get_model_conversion_mapping
        from transformers.core_model_loading import WeightRenaming, rename_source_key
    except ImportError:  # transformers before v5 renames nothing on load
        return {key: key for key in checkpoint.entries}
    transforms = get_model_conversion_mapping(model)
    renamings = [t for t in transforms if isinstance(t, WeightRenaming)]
    converters = [t for t in transforms if not isinstance(t, WeightRenaming)]
    meta = model.state_dict()
    found = {}
    for key in checkpoint.entries:
        name, converted = rename_source_key(key, renamings, converters, getattr(model, "base_model_prefix", None), meta)
        if converted is not None:
            raise InputError(f"{checkpoint.directory}: tensor '{key}' is converted (merged or split) when "
                             f"{type(model).__name__} loads it; slim_checkpoint reads tensors as they are: "
                             "slim this model in memory with surgeon.slim")
        found[name] = key
    return found


def _check(model: nn.Module, checkpoint: Checkpoint, names: dict[str, str]) -> None:
    """Every persistent tensor is in the checkpoint with the shape the config gives it."""
    state = model.state_dict()
    params = dict(model.named_parameters(remove_duplicate=False))
    for name in state:
        if name not in names and name in params:
            raise InputError(f"{checkpoint.directory}: the checkpoint holds no tensor '{name}' "
                             f"(a {type(model).__name__} built from its config.json has one)")
    for name, stored in names.items():
        have, want = checkpoint.entries[stored].shape, tuple(state[name].shape)
        if have != want:
            raise InputError(f"{checkpoint.directory}: config.json does not match the tensors: '{stored}' is "
                             f"{have} in the checkpoint, {want} in a {type(model).__name__} built from the config")
    extra = sorted(set(checkpoint.entries) - set(names.values()))
    if extra:
        warn(f"{checkpoint.directory}: {len(extra)} tensors are not in a {type(model).__name__} built from its "
             f"config ({', '.join(extra[:3])}{' …' if len(extra) > 3 else ''}); they are copied unchanged")


def meta_inputs(tokens: int = 8) -> dict[str, torch.Tensor]:
    """Example inputs for tracing a language model on `meta`: one sequence of `tokens` ids."""
    return {"input_ids": torch.zeros(1, tokens, dtype=torch.long, device="meta")}
