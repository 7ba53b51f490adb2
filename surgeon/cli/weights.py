"""`--weights FILE`: a state_dict from safetensors or `torch.load(weights_only=True)`, loaded
into the built model (a classifier of another width rebuilds the model with that width)."""
from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import torch
from torch import nn

from ..errors import InputError

__all__ = ["read_state_dict", "load_weights"]

_WRAPPERS = ("state_dict", "model_state_dict", "model")  # common checkpoint layouts


def read_state_dict(path: Path) -> dict[str, torch.Tensor]:
    """The tensors of a weights file, unwrapped from a training checkpoint and a DDP `module.`
    prefix.

    Example:
        >>> state = read_state_dict(Path("resnet18.safetensors"))
    """
    if not path.is_file():
        raise InputError(f"--weights {path}: no such file")
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            state = load_file(path)
        else:
            state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        reason = (str(e).strip().splitlines() or [type(e).__name__])[0]
        raise InputError(f"cannot read --weights {path}: not a safetensors file or a torch.save file "
                         f"({reason}); pass a .safetensors file or a state_dict written by "
                         "torch.save(model.state_dict(), path)") from e
    for key in _WRAPPERS:
        if isinstance(state, dict) and isinstance(state.get(key), dict):
            state = state[key]
    if not isinstance(state, dict) or not state or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise InputError(f"--weights {path} holds a {type(state).__name__}, not a state_dict; save "
                         "one with torch.save(model.state_dict(), path)")
    if all(k.startswith("module.") for k in state):
        state = {k[len("module."):]: v for k, v in state.items()}
    return state


def _classifier(state: dict[str, torch.Tensor]) -> str | None:
    """The last matrix in module order: the classifier of a vision model."""
    return next((k for k, t in reversed(state.items()) if t.dim() >= 2), None)


def load_weights(model: nn.Module, state: dict[str, torch.Tensor], path: Path,
                 rebuild: Callable[[int], nn.Module] | None = None) -> nn.Module:
    """`model` (or `rebuild(num_classes)` when the classifier's width differs) with `state`
    loaded strictly; a mismatch names the first tensors that do not fit."""
    head = _classifier(model.state_dict())
    if rebuild is not None and head in state and state[head].shape[0] != model.state_dict()[head].shape[0]:
        model = rebuild(state[head].shape[0])
    own = model.state_dict()
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    wrong = [f"{k} {tuple(state[k].shape)} (model: {tuple(own[k].shape)})"
             for k in own if k in state and state[k].shape != own[k].shape]
    problems = [f"{len(found)} {what} ({', '.join(found[:2])}{', …' if len(found) > 2 else ''})"
                for what, found in (("missing", missing), ("unexpected", unexpected),
                                    ("of another shape", wrong)) if found]
    if problems:
        raise InputError(f"--weights {path} do not fit {type(model).__name__}: tensors "
                         f"{'; '.join(problems)}; pass the weights of this architecture, or the spec "
                         "the weights were trained with")
    model.load_state_dict(state, strict=True)
    return model
