"""Pruning inside a ``torch.distributed`` job (DDP launched with ``torchrun``).

Pruning decisions are made once, on rank 0, and sent to the other ranks, so every rank removes
the same weights or channels; a DDP wrapper is rebuilt over a slimmed module; only rank 0 writes
files. Outside a distributed job every helper degrades to the single-process behaviour.

Example:
    >>> from surgeon import distributed
    >>> plan_json = distributed.broadcast_object(plan.to_json() if distributed.is_main() else None)
    >>> model = distributed.rewrap(slim_module, like=model)  # new DDP over the new parameters
    >>> distributed.save(model.state_dict(), "slim.pt")    # rank 0 only
"""

from __future__ import annotations

import os
from typing import Any, TypeVar

import torch
import torch.distributed as dist
import torch.nn as nn
from torch.nn.parallel import DistributedDataParallel

__all__ = ["all_gather_object", "barrier", "broadcast_object", "full_state_dict", "is_distributed", "is_main",
           "rank_and_size", "rewrap", "save", "shard", "unwrap"]

T = TypeVar("T")


def is_distributed() -> bool:
    """Whether a default process group is initialised."""
    return dist.is_available() and dist.is_initialized()


def is_main() -> bool:
    """Whether this process is rank 0, or the only process.

    Example:
        >>> if distributed.is_main():
        ...     print("only once")
    """
    return not is_distributed() or dist.get_rank() == 0


def unwrap(model: nn.Module) -> nn.Module:
    """The module inside a :class:`~torch.nn.parallel.DistributedDataParallel`, else ``model``.

    Example:
        >>> distributed.unwrap(DistributedDataParallel(net)) is net
        True
    """
    return model.module if isinstance(model, DistributedDataParallel) else model


def rewrap(module: nn.Module, *, like: nn.Module) -> nn.Module:
    """Wraps ``module`` in a new DDP configured like ``like``; returns it bare if ``like`` is.

    A DDP wrapper holds the parameters it was built over, so after a structured step (new,
    smaller parameters) it must be rebuilt. Building it broadcasts rank 0's parameters and
    buffers, so all ranks start the next step identical.

    Example:
        >>> model = distributed.rewrap(surgeon.slim(distributed.unwrap(model), 0.2, x), like=model)
    """
    if not isinstance(like, DistributedDataParallel):
        return module
    return DistributedDataParallel(
        module, device_ids=like.device_ids, output_device=like.output_device,
        broadcast_buffers=like.broadcast_buffers, process_group=like.process_group,
        find_unused_parameters=like.find_unused_parameters)


def broadcast_object(obj: T, *, src: int = 0) -> T:
    """Rank ``src``'s ``obj`` on every rank (picklable objects: a plan's JSON, a mask dict).

    Example:
        >>> masks = distributed.broadcast_object(masks_of(model) if distributed.is_main() else None)
    """
    if not is_distributed():
        return obj
    box: list[Any] = [obj if dist.get_rank() == src else None]
    device = torch.device("cuda", torch.cuda.current_device()) if (
        dist.get_backend() == "nccl") else None
    dist.broadcast_object_list(box, src=src, device=device)
    return box[0]


def rank_and_size() -> tuple[int, int]:
    """This process's rank and the number of processes (0, 1 outside a distributed job)."""
    return (dist.get_rank(), dist.get_world_size()) if is_distributed() else (0, 1)


def all_gather_object(obj: T) -> list[T]:
    """Every rank's ``obj``, in rank order, on every rank (``[obj]`` outside a job).

    Example:
        >>> hashes = distributed.all_gather_object(plan.hash())
    """
    if not is_distributed():
        return [obj]
    box: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(box, obj)
    return box


def barrier() -> None:
    """Wait for every rank (nothing outside a distributed job)."""
    if is_distributed():
        dist.barrier()


def shard(model: nn.Module, *, layers: list[nn.Module] | None = None) -> nn.Module:
    """FSDP2 (`fully_shard`) over `model`: each of `layers` (default: the blocks of every
    `nn.ModuleList`, a transformer's layers) sharded on its own, then the rest; each rank holds
    1/world of every parameter between forward passes. Returns `model` (sharded in place).

    Example:
        >>> model = distributed.shard(transformers.AutoModelForCausalLM.from_pretrained("slim"))
    """
    from torch.distributed.fsdp import fully_shard

    if layers is None:
        layers = [block for m in model.modules() if isinstance(m, nn.ModuleList) for block in m]
    for layer in layers:
        fully_shard(layer)
    fully_shard(model)
    return model


def full_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """The whole (unsharded) state of an FSDP2 or DDP model on the CPU, on rank 0 (other ranks
    get an empty dict); every rank must call it.

    Example:
        >>> state = distributed.full_state_dict(model)
        >>> if distributed.is_main(): slim.load_state_dict(state)
    """
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

    if not is_distributed():
        return {k: v.detach().cpu() for k, v in unwrap(model).state_dict().items()}
    return get_model_state_dict(unwrap(model), options=StateDictOptions(full_state_dict=True, cpu_offload=True))


def save(obj: object, path: str | os.PathLike[str]) -> bool:
    """:func:`torch.save` on rank 0 only; returns whether this rank wrote the file.

    Example:
        >>> distributed.save(distributed.unwrap(model).state_dict(), "pruned.pt")
        True
    """
    if not is_main():
        return False
    torch.save(obj, path)
    return True
