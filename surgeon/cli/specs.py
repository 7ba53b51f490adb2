"""Model specs: what the `surgeon` command builds from `torchvision:NAME`, `timm:NAME`, `hf:DIR`,
`module:package.module:factory` or a directory written by `surgeon.save`. Nothing is downloaded.
"""
from __future__ import annotations

import argparse
import dataclasses
import difflib
import importlib
import importlib.util
import inspect
import json
import os
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from torch import nn

from ..errors import InputError
from ..io import _build, load
from .args import SPEC_HELP
from .extras import optional
from .inputs import example_inputs, parse_shape
from .weights import load_weights, read_state_dict

__all__ = ["Built", "Model", "build", "load_model", "original_of"]


@dataclass(frozen=True)
class Built:
    """A model built from a spec: `kind` is torchvision, timm, hf, module or saved."""

    model: nn.Module
    kind: str
    name: str
    directory: Path | None = None


def _suggest(name: str, known: Sequence[str]) -> str:
    close = difflib.get_close_matches(name, known, n=3, cutoff=0.6)
    return f" (did you mean {', '.join(close)}?)" if close else ""


def _torchvision(name: str, **kwargs: int) -> nn.Module:
    tv = optional("torchvision", "pip install 'surgeon[vision]'")
    try:
        builder = tv.models.get_model_builder(name)
    except ValueError as e:
        hint = _suggest(name, tv.models.list_models())
        if not hint and importlib.util.find_spec("timm") is not None and optional("timm", "").is_model(name):
            hint = f" (timm has it: timm:{name})"
        raise InputError(f"torchvision has no model '{name}'{hint}; other models: {SPEC_HELP}") from e
    if "weights_backbone" in inspect.signature(builder).parameters:
        kwargs["weights_backbone"] = None  # segmentation models would fetch a backbone otherwise
    return builder(weights=None, **kwargs)


def _timm(name: str, **kwargs: int) -> nn.Module:
    timm = optional("timm", "pip install timm")
    if not timm.is_model(name):
        raise InputError(f"timm has no model '{name}'{_suggest(name, timm.list_models())}; "
                         "list them with: python -c \"import timm; print(timm.list_models('vit*'))\"")
    return timm.create_model(name, pretrained=False, **kwargs)


def _hf(directory: str) -> nn.Module:
    path = Path(directory)
    if not (path / "config.json").is_file():
        raise InputError(f"hf:{directory} needs a local directory holding config.json (nothing is "
                         "downloaded); save one with model.save_pretrained(DIR)")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    transformers = optional("transformers", "pip install 'surgeon[hf]'")
    transformers.utils.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()
    architectures = json.loads((path / "config.json").read_text()).get("architectures") or []
    cls = getattr(transformers, architectures[0], None) if architectures else None
    try:
        return (cls or transformers.AutoModel).from_pretrained(path, local_files_only=True)
    except Exception as e:  # the user's files: whatever transformers finds wrong with them
        raise InputError(f"transformers cannot load hf:{directory}: {_first_line(e)}") from e


def _module(target: str) -> nn.Module:
    module_name, _, attr = target.partition(":")
    if not module_name or not attr:
        raise InputError(f"'module:{target}' needs a module and a factory: module:package.module:factory, "
                         "e.g. module:mymodels:build_net")
    if os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())  # as `python -m` does: the user's own files import
    try:
        factory = getattr(importlib.import_module(module_name), attr)
    except (ImportError, AttributeError) as e:
        raise InputError(f"cannot load module:{target}: {_first_line(e)}; run surgeon from the folder "
                         "that holds the module, or install its package") from e
    model = factory() if callable(factory) and not isinstance(factory, nn.Module) else factory
    if not isinstance(model, nn.Module):
        raise InputError(f"module:{target} gave a {type(model).__name__}, not a torch.nn.Module; point "
                         "it at a function returning the model")
    return model


def _first_line(e: BaseException) -> str:
    return (str(e).strip().splitlines() or [type(e).__name__])[0]


BUILDERS: dict[str, Callable[..., nn.Module]] = {
    "torchvision": _torchvision, "timm": _timm, "hf": _hf, "module": _module,
}


def build(spec: str, **kwargs: int) -> Built:
    """Build the model a spec names, with random weights (`kwargs` such as `num_classes` go to
    torchvision and timm builders), in eval mode.

    Example:
        >>> build("timm:resnet18").model
    """
    source, colon, rest = spec.partition(":")
    if colon and source in BUILDERS:
        return Built(BUILDERS[source](rest, **kwargs).eval(), source, rest)
    path = Path(spec)
    if path.is_dir():
        if (path / "surgeon.json").is_file():
            return Built(load(path).eval(), "saved", path.name, path)
        if (path / "config.json").is_file():
            return build(f"hf:{spec}")
        raise InputError(f"{spec} holds neither surgeon.json (surgeon.save) nor config.json "
                         f"(Hugging Face); use {SPEC_HELP}")
    if colon:
        raise InputError(f"unknown model source '{source}' in '{spec}'; use {SPEC_HELP}")
    return Built(_torchvision(spec, **kwargs).eval(), "torchvision", spec)


def original_of(built: Built) -> nn.Module:
    """The unpruned model a saved directory was slimmed from (random weights; for costs)."""
    meta = json.loads((built.directory / "surgeon.json").read_text())
    return _build(meta, built.directory).eval()


@dataclass(frozen=True)
class Model:
    """The model a command works on: built, weights loaded, with its example inputs."""

    built: Built
    inputs: Any

    @property
    def module(self) -> nn.Module:
        return self.built.model


def load_model(args: argparse.Namespace) -> Model:
    """Build `args.model`, load `--weights`, make the example inputs (`--input-shape`)."""
    shape = parse_shape(args.input_shape)
    built = build(args.model)
    if args.weights is not None:
        state = read_state_dict(args.weights)
        def rebuild(classes: int) -> nn.Module:
            return build(args.model, num_classes=classes).model

        resizable = rebuild if built.kind in ("torchvision", "timm") else None
        built = dataclasses.replace(built, model=load_weights(built.model, state, args.weights, resizable).eval())
    return Model(built, example_inputs(built.model, shape))
