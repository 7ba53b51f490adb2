"""`slim_checkpoint`: slim a Hugging Face safetensors checkpoint that need not fit in memory.

The model is built on the meta device from `config.json` and traced there; weight criteria read
one tensor at a time, data criteria stream the calibration batches through the graph node by
node (`stream.py`); the plan is the one `slim` makes in memory; the slim shards are written one
tensor at a time into a fresh directory that replaces nothing (renamed into place when complete).
Under torchrun every rank takes its share of the calibration batches, all compute the same plan
(checked), and rank 0 writes.
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .. import distributed
from ..config import Config, make_config
from ..core.batches import split_batch
from ..core.budget import choose
from ..core.criteria import needs
from ..core.groups import Coupling
from ..core.plan import Cut, Plan
from ..core.propagate import propagate
from ..core.rank import score_units, weight_spaces
from ..core.rebuild import apply_plan, cut_tensor
from ..core.trace import traced
from ..core.verify import output_shapes
from ..errors import InputError, PlanError, SurgeonError
from ..io import describe
from ..stages import Stages
from ..util import Inputs, as_inputs, model_inputs, warn
from .model import build, meta_inputs
from .shards import INDEX, SINGLE, Checkpoint, write_shard
from .stream import share, stream_stats

__all__ = ["slim_checkpoint"]


def slim_checkpoint(src: str | os.PathLike, dst: str | os.PathLike, ratio: float | Config | None = None, *,
                    calibration: Iterable[Any] | None = None, progress: bool | None = None,
                    **options: Any) -> Plan:
    """Slim the checkpoint in directory `src` into the new directory `dst` without loading it:
    memory holds one tensor (and, with calibration, one layer's weights and the activations).

    Args:
        src: a Hugging Face checkpoint directory — `config.json` and `model.safetensors` or
            sharded safetensors with their index.
        dst: where the slim checkpoint goes (must not exist): the shards with the kept slices,
            `config.json` with the slim widths, the other files copied, and `surgeon.json` (the
            plan). It loads with `from_pretrained` when its widths are uniform, else with
            `surgeon.load(dst)`.
        ratio: as in `slim` (or a `Config`; or `target_params=` / `target_macs=`).
        calibration: for "activation", "fluctuation" or a `Criterion` without gradients:
            batches of inputs such as `{"input_ids": ids}` (all of one sequence length). Under
            torchrun a list is dealt over the ranks. Gradient criteria ("taylor") and
            `compensate` need the model in memory: use `surgeon.slim`.
        progress: show progress lines (default: when stderr is a terminal).
        **options: the fields of `surgeon.Config`, as for `slim`.

    Returns:
        The plan (also in `dst/surgeon.json`); in-memory `slim` makes the same one.

    Example:
        >>> surgeon.slim_checkpoint("Llama-3.1-8B", "Llama-slim", 0.25)
        >>> model = surgeon.load("Llama-slim")  # 24 heads of 128 over a 4096 width: transformers refuses the config
    """
    config = make_config(ratio, options)
    reads = needs(config.importance)
    if config.compensate or (reads and reads[1]):
        what = "compensate=True" if config.compensate else f"importance={config.importance!r} (gradients)"
        raise InputError(f"{what} needs the whole model in memory: use surgeon.slim on the loaded model")
    target = Path(dst)
    if target.exists():
        raise InputError(f"{target} exists: slim_checkpoint writes a new directory and never overwrites one")
    if reads and calibration is None:
        raise InputError(f"importance={config.importance!r} ranks units on data: pass calibration=batches")
    if calibration is not None and not reads:
        warn(f"calibration data is read only by data criteria; importance={config.importance!r} ignores it")
    checkpoint = Checkpoint(src)
    stages = Stages(show=progress)
    try:
        with stages.stage("build"):
            model, buffers, names = build(checkpoint)
        batches = share(calibration) if reads else []
        example = _example(batches)
        inputs = model_inputs(model, example.map(lambda t: t.to("meta")) if example else meta_inputs())
        graphs, expected = traced(model, inputs, config, stages)
        with stages.stage("propagate"):
            coupling = Coupling(propagate(model, graphs, config, keep={}))
        read = lambda name: checkpoint.read(names[name])
        stats = None
        if reads:  # (a rank may hold no batch: it still takes part in merging the statistics)
            real = example.with_defaults(**{k: v for k, v in inputs.kwargs.items() if not isinstance(v, torch.Tensor)}) \
                if example else inputs
            batches = [split_batch(b, real)[0] for b in batches]
            with stages.stage("calibrate", total=len(graphs[0].graph.nodes)):
                stats = stream_stats(model, graphs[0], coupling, batches, real, read, set(names), buffers,
                                     advance=lambda: stages.advance("calibrate"))
        with stages.stage("rank", total=len(weight_spaces(model, coupling))):
            scores = score_units(model, coupling, config.importance, stats=stats, read=read,
                                 advance=lambda: stages.advance("rank"))
        plan, _ = choose(model, graphs[0], coupling, scores, config, stages)
        _same_everywhere(plan)
        with stages.stage("check"):
            slim = apply_plan(model, plan, inplace=True)
            got = output_shapes(slim, inputs)
        if got != expected:
            raise SurgeonError(f"output shapes changed from {expected} to {got}: please report this model")
        if distributed.is_main():
            with stages.stage("write", total=len(checkpoint.entries)):
                _write(checkpoint, target, plan, slim, names, {"seconds": stages.seconds},
                       advance=lambda: stages.advance("write"))
        distributed.barrier()
    finally:
        stages.close()
    return plan


def _example(batches: list[Any]) -> Inputs | None:
    """One sample of the first calibration batch: the shapes to trace with."""
    if not batches:
        return None
    first = as_inputs(batches[0][0] if isinstance(batches[0], (tuple, list)) and len(batches[0]) == 2 else batches[0])
    return first.map(lambda t: t[:1] if t.dim() else t)


def _same_everywhere(plan: Plan) -> None:
    """Every rank made this plan (their calibration statistics were merged, so they must)."""
    digest = hashlib.sha256(plan.to_json().encode()).hexdigest()
    hashes = distributed.all_gather_object(digest)
    if len(set(hashes)) > 1:
        raise PlanError(f"the ranks made different plans (hashes {sorted(set(hashes))}): their checkpoints "
                        "or options differ")


def _write(checkpoint: Checkpoint, target: Path, plan: Plan, slim: nn.Module, names: dict[str, str],
           record: dict[str, Any], *, advance: Callable[[], None]) -> None:
    """The slim checkpoint, assembled in a sibling directory and renamed to `target` at the end;
    `surgeon.json` holds the plan, the original config, what was read and `record`."""
    cuts: dict[str, list[Cut]] = {}
    for cut in plan.cuts:
        if cut.tensor in names:
            cuts.setdefault(names[cut.tensor], []).append(cut)
    target.parent.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=target.parent))
    try:
        weight_map, total = {}, 0
        for file in checkpoint.files:
            entries = [(e.name, e.dtype, _shape(e.shape, cuts.get(e.name, ()))) for e in checkpoint.in_file(file)]

            def produce(name: str) -> torch.Tensor:
                t = checkpoint.read(name)
                t = cut_tensor(t, cuts[name]) if name in cuts else t
                advance()
                return t

            total += write_shard(work / file, entries, produce, checkpoint.metadata[file])
            weight_map.update({name: file for name, _, _ in entries})
        if checkpoint.files != [SINGLE]:
            index = {"metadata": {"total_size": total}, "weight_map": dict(sorted(weight_map.items()))}
            (work / INDEX).write_text(json.dumps(index, indent=2))
        for item in checkpoint.directory.iterdir():
            if item.is_file() and item.name not in {*checkpoint.files, INDEX, "config.json"}:
                shutil.copy2(item, work / item.name)
        slim.config.to_json_file(work / "config.json")  # also where transformers' checks refuse it (warned)
        renamed = {stored: name for name, stored in names.items() if stored != name and name in slim.state_dict()}
        meta = {**describe(slim, plan), "config": checkpoint.config, "renamed": renamed,
                "bytes_read": checkpoint.bytes_read, **record}
        (work / "surgeon.json").write_text(json.dumps(meta, indent=1))
        os.replace(work, target)
    except BaseException:
        shutil.rmtree(work, ignore_errors=True)
        raise


def _shape(shape: tuple[int, ...], cuts: Iterable[Cut]) -> tuple[int, ...]:
    out = list(shape)
    for cut in cuts:
        out[cut.dim] -= len(cut.remove)
    return tuple(out)
