"""Save and load slim models without pickles: the plan as JSON, the weights as safetensors.

A slim model's class is the original's, so its `state_dict` fits no freshly built model. A saved
directory holds what rebuilds it: `surgeon.json` (the plan, the original model's class, where
to build it from, its tensor names and shapes, library versions), `model.safetensors` (the slim
weights) and, for Hugging Face models, `config.json` (the original config). `load` builds the
original (or takes the one given), replays the plan and loads the weights.
"""
from __future__ import annotations

import importlib
import json
import os
import shutil
import tempfile
import warnings
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_model
from torch import nn

from .core.plan import Plan
from .core.rebuild import PLAN_ATTR, apply_plan
from .errors import InputError, PlanError
from .util import names_by_tensor, parameters_on_meta

__all__ = ["save", "load", "describe", "FORMAT"]

FORMAT = "surgeon/1"
_META, _WEIGHTS, _CONFIG, _INDEX = "surgeon.json", "model.safetensors", "config.json", "model.safetensors.index.json"


def _shapes(model: nn.Module) -> list[list[Any]]:
    return [[n, list(t.shape)] for n, t in [*model.named_parameters(), *model.named_buffers()]]


def _original_shapes(slim: nn.Module, plan: Plan) -> list[list[Any]]:
    """The original model's tensor shapes: the slim shapes with every cut dimension restored,
    without the biases bias compensation created."""
    sizes = {(c.tensor, c.dim): c.size for c in plan.cuts}
    created = {s.bias for s in plan.shifts if s.created}
    return [[n, [sizes.get((n, d), s) for d, s in enumerate(shape)]] for n, shape in _shapes(slim) if n not in created]


def _versions() -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    found = {}
    for name in ("surgeon", "torch", "torchvision", "timm", "transformers"):
        try:
            found[name] = version(name)
        except PackageNotFoundError:
            continue
    return found


def _source(model: nn.Module, shapes: list[list[Any]]) -> str | None:
    """Where `load` can build the original from: a Hugging Face config, a timm name, or the
    torchvision model of the same class whose tensors have the same shapes."""
    if hasattr(model, "config") and hasattr(model.config, "to_dict") and hasattr(model, "save_pretrained"):
        return "hf"
    arch = getattr(model, "pretrained_cfg", {}).get("architecture")
    if arch and type(model).__module__.startswith("timm."):
        return f"timm:{arch}"
    if type(model).__module__.startswith("torchvision."):
        import torchvision

        for name in torchvision.models.list_models():
            builder = torchvision.models.get_model_builder(name)
            if builder.__module__ != type(model).__module__:
                continue
            try:
                with torch.device("meta"):
                    candidate = builder(weights=None, num_classes=_classes(model))
            except Exception:  # a builder that needs other arguments
                continue
            if type(candidate) is type(model) and _shapes(candidate) == shapes:
                return f"torchvision:{name}"
    return None


def _classes(model: nn.Module) -> int:
    """The classifier width of a vision model (rows of its last matrix or conv), for a builder."""
    return next((p.shape[0] for p in reversed(list(model.parameters())) if p.dim() >= 2), 1000)


def describe(slim: nn.Module, plan: Plan) -> dict[str, Any]:
    """What `load` needs besides the weights (the `surgeon.json` of a saved directory); `slim`
    may live on the meta device."""
    original = _original_shapes(slim, plan)
    return {"format": FORMAT, "plan": json.loads(plan.to_json()), "versions": _versions(),
            "model_class": f"{type(slim).__module__}:{type(slim).__qualname__}",
            "source": _source(slim, original), "num_classes": _classes(slim), "original": original,
            "slim": _shapes(slim)}


def save(slim: nn.Module, directory: str | os.PathLike, *, overwrite: bool = False) -> Path:
    """Write `slim` (made by `surgeon.slim` or `Plan.apply`) to `directory`, atomically.

    Example:
        >>> surgeon.save(slim, "resnet50-slim")
        >>> again = surgeon.load("resnet50-slim")
    """
    plan = getattr(slim, PLAN_ATTR, None)
    if plan is None:
        raise InputError("this model carries no surgeon plan: save a model made by surgeon.slim "
                         "or Plan.apply (an unpruned model needs no surgeon: use torch.save)")
    target = Path(directory)
    if target.exists() and not overwrite:
        raise InputError(f"{target} exists; pass overwrite=True or choose another directory")
    meta = describe(slim, plan)
    target.parent.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=target.parent))
    try:
        (work / _META).write_text(json.dumps(meta, indent=1))
        save_model(slim, str(work / _WEIGHTS))
        if meta["source"] == "hf":
            config = getattr(slim, "surgeon_config", None) or slim.config.to_dict()
            (work / _CONFIG).write_text(json.dumps(config, indent=2, sort_keys=True, default=str))
        if target.exists():
            shutil.rmtree(target)
        os.replace(work, target)
    except BaseException:
        shutil.rmtree(work, ignore_errors=True)
        raise
    return target


def _build(meta: dict[str, Any], directory: Path) -> nn.Module:
    source = meta.get("source")
    if source == "hf":
        import transformers

        config_dict = meta.get("config") or json.loads((directory / _CONFIG).read_text())
        config = transformers.CONFIG_MAPPING[config_dict["model_type"]].from_dict(config_dict)
        module, _, name = meta["model_class"].partition(":")
        return getattr(importlib.import_module(module), name)(config)
    if source and source.startswith("timm:"):
        import timm

        return timm.create_model(source[5:], pretrained=False, num_classes=meta["num_classes"])
    if source and source.startswith("torchvision:"):
        import torchvision

        return torchvision.models.get_model(source[12:], weights=None, num_classes=meta["num_classes"])
    raise InputError(f"cannot build a {meta['model_class']} by itself: pass the original model, "
                     "e.g. surgeon.load(directory, model=MyModel())")


def _first_difference(model: nn.Module, original: list[list[Any]]) -> str | None:
    have = {n: s for n, s in _shapes(model)}
    for name, shape in original:
        if have.get(name) != shape:
            module = name.rpartition(".")[0] or "(root)"
            found = "missing" if name not in have else f"of shape {tuple(have[name])}"
            return f"module '{module}': tensor '{name}' is {found}, the saved model had {tuple(shape)}"
    known = {n for n, _ in original}
    extra = [n for n in have if n not in known]
    return (f"module '{extra[0].rpartition('.')[0]}' has tensor '{extra[0]}', which the saved model "
            "did not have") if extra else None


def load(directory: str | os.PathLike, model: nn.Module | None = None) -> nn.Module:
    """The slim model saved in `directory`: `model` (a freshly built original, changed in place)
    or one built from what was recorded (in eval mode, as `from_pretrained` gives it), with the
    plan replayed and the weights loaded.

    Example:
        >>> slim = surgeon.load("resnet50-slim", torchvision.models.resnet50())
    """
    directory = Path(directory)
    if not (directory / _META).is_file():
        raise InputError(f"{directory} holds no {_META}: not a directory written by surgeon.save")
    meta = json.loads((directory / _META).read_text())
    if meta.get("format") != FORMAT:
        raise PlanError(f"{directory} was written in format {meta.get('format')!r}; this surgeon "
                        f"reads {FORMAT!r}: load it with the surgeon version that wrote it "
                        f"({meta.get('versions', {}).get('surgeon', 'unknown')})")
    built = model is None
    if built:  # parameters on meta until the weights arrive: memory holds the slim model only
        with parameters_on_meta():
            model = _build(meta, directory).eval()
        if any(b.is_meta for b in model.buffers()):  # computed from a parameter (timm's Swin masks)
            model, built = _build(meta, directory).eval(), False
    wrong = _first_difference(model, meta["original"])
    if wrong is not None:
        raise PlanError(f"this is not the model {directory} was made from ({meta['model_class']}): {wrong}")
    plan = Plan.from_json(json.dumps(meta["plan"]))
    with warnings.catch_warnings():  # that the config cannot hold the widths is why this directory exists
        warnings.filterwarnings("ignore", message=".*cannot describe the slim model")
        slim = apply_plan(model, plan, inplace=True)
    wrong = _first_difference(slim, meta["slim"])
    if wrong is not None:
        raise PlanError(f"replaying the plan did not give the saved shapes: {wrong}")
    _load_weights(slim, directory, meta.get("renamed", {}), assign=built)
    return slim


def _load_weights(slim: nn.Module, directory: Path, renamed: dict[str, str], *, assign: bool) -> None:
    """`model.safetensors` or the shards of an index; a tied weight is stored under one of its
    names, and `renamed` maps checkpoint names to the model's (`slim_checkpoint` keeps a
    checkpoint's own names). With `assign`, the loaded tensors become the parameters (replacing
    ones on the meta device; tied weights tied again)."""
    index = directory / _INDEX
    files = dict.fromkeys(json.loads(index.read_text())["weight_map"].values()) if index.is_file() else [_WEIGHTS]
    tensors: dict[str, torch.Tensor] = {}
    for file in files:
        tensors.update({renamed.get(k, k): t for k, t in load_file(str(directory / file)).items()})
    groups = [names for names in names_by_tensor(slim, buffers=False)
              if len(names) > 1 and any(a in tensors for a in names)]
    tied = {n for names in groups for n in names}
    missing, unexpected = slim.load_state_dict(tensors, strict=False, assign=assign)
    for names in groups if assign else ():  # assigned under one name: the others share it again
        loaded = slim.get_parameter(next(n for n in names if n in tensors))
        for name in names:
            owner, _, attr = name.rpartition(".")
            slim.get_submodule(owner)._parameters[attr] = loaded
    if set(missing) - tied or unexpected:
        raise PlanError(f"{directory}: the weights do not hold the slim model's tensors (missing "
                        f"{sorted(set(missing) - tied)[:3]}, unexpected {sorted(unexpected)[:3]})")
    if empty := [n for n, p in slim.named_parameters() if p.is_meta]:
        raise PlanError(f"{directory}: no weights for {empty[:3]}")
