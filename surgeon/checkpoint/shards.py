"""Safetensors checkpoints read one tensor at a time and written one tensor at a time.

`safetensors.safe_open` maps a whole shard into memory: every page a read touches stays resident
(and counts in RSS) until the file is closed, so reading a 5 GB shard tensor by tensor ends at
5 GB. `Checkpoint.read` instead reads a tensor's bytes from the file into a fresh tensor, and
`write_shard` writes a shard's header first (every shape is known from the plan) and then each
tensor as it is produced, so neither ever holds more than one tensor. The format is the
safetensors one (an 8-byte little-endian header length, a JSON header of dtypes, shapes and byte
offsets, the raw bytes); what is written is read back by `safetensors` and `from_pretrained`.
"""
from __future__ import annotations

import json
import os
import struct
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

import torch

from ..errors import InputError

__all__ = ["Checkpoint", "Entry", "write_shard", "DTYPES", "INDEX", "SINGLE"]

INDEX, SINGLE = "model.safetensors.index.json", "model.safetensors"
DTYPES = {"F64": torch.float64, "F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16,
          "I64": torch.int64, "I32": torch.int32, "I16": torch.int16, "I8": torch.int8, "U8": torch.uint8,
          "BOOL": torch.bool, "F8_E4M3": torch.float8_e4m3fn, "F8_E5M2": torch.float8_e5m2}
_NAMES = {v: k for k, v in DTYPES.items()}


@dataclass(frozen=True)
class Entry:
    """One tensor of a shard: where its bytes are (`start` from the file's beginning)."""

    name: str
    file: str
    dtype: torch.dtype
    shape: tuple[int, ...]
    start: int
    nbytes: int


def _header(path: Path) -> tuple[dict, int]:
    """A shard's JSON header and the offset its data starts at."""
    try:
        with open(path, "rb") as f:
            (size,) = struct.unpack("<Q", f.read(8))
            if size > 100_000_000:
                raise ValueError(f"header of {size} bytes")
            return json.loads(f.read(size)), 8 + size
    except (OSError, ValueError, struct.error) as e:
        raise InputError(f"{path} is not a readable safetensors file ({e})") from e


class Checkpoint:
    """A Hugging Face checkpoint directory: `config.json` and one `model.safetensors` or the
    shards an index names. Opening it reads every header (checked: each shard the index names
    exists, each tensor it maps is in its shard, byte ranges fit the file)."""

    def __init__(self, directory: str | os.PathLike) -> None:
        self.directory = Path(directory)
        if not (self.directory / "config.json").is_file():
            raise InputError(f"{self.directory} holds no config.json: not a Hugging Face checkpoint directory")
        self.config = json.loads((self.directory / "config.json").read_text())
        files, mapped = self._files()
        self.entries: dict[str, Entry] = {}
        self.metadata: dict[str, dict] = {}
        self.files = files
        for file in files:
            path = self.directory / file
            if not path.is_file():
                raise InputError(f"{self.directory}: shard {file} is missing (named by {INDEX})")
            header, data = _header(path)
            self.metadata[file] = header.pop("__metadata__", None) or {}
            length = path.stat().st_size
            for name, info in header.items():
                begin, end = info["data_offsets"]
                if info["dtype"] not in DTYPES or data + end > length:
                    raise InputError(f"{path}: tensor '{name}' has dtype {info['dtype']} or bytes past the file's end")
                self.entries[name] = Entry(name, file, DTYPES[info["dtype"]], tuple(info["shape"]), data + begin, end - begin)
        for name, file in mapped.items():
            if self.entries.get(name) is None or self.entries[name].file != file:
                raise InputError(f"{self.directory}: {INDEX} maps tensor '{name}' to {file}, which does not hold it")
        self.bytes_read = 0

    def _files(self) -> tuple[list[str], dict[str, str]]:
        index = self.directory / INDEX
        if index.is_file():
            weight_map = json.loads(index.read_text()).get("weight_map", {})
            return list(dict.fromkeys(weight_map.values())), weight_map
        if (self.directory / SINGLE).is_file():
            return [SINGLE], {}
        raise InputError(f"{self.directory} holds neither {SINGLE} nor {INDEX}: no safetensors weights to read")

    def read(self, name: str) -> torch.Tensor:
        """Tensor `name`, read from its shard into fresh memory."""
        entry = self.entries.get(name)
        if entry is None:
            raise InputError(f"{self.directory}: the checkpoint holds no tensor '{name}'")
        buffer = torch.empty(entry.nbytes, dtype=torch.uint8)
        with open(self.directory / entry.file, "rb") as f:
            f.seek(entry.start)
            if f.readinto(memoryview(buffer.numpy())) != entry.nbytes:
                raise InputError(f"{self.directory / entry.file}: tensor '{name}' is truncated")
        self.bytes_read += entry.nbytes
        return buffer.view(entry.dtype).reshape(entry.shape)

    def in_file(self, file: str) -> list[Entry]:
        """The tensors of one shard, in the order of their bytes."""
        return sorted((e for e in self.entries.values() if e.file == file), key=lambda e: e.start)


def write_shard(path: Path, entries: Iterable[tuple[str, torch.dtype, tuple[int, ...]]],
                produce: Callable[[str], torch.Tensor], metadata: dict[str, str] | None = None) -> int:
    """Write a safetensors file of `entries` (name, dtype, shape), calling `produce(name)` for
    each tensor's values in turn; returns the bytes written."""
    entries = list(entries)
    header: dict = {"__metadata__": metadata} if metadata else {}
    offset = 0
    for name, dtype, shape in entries:
        size = dtype.itemsize * int(torch.Size(shape).numel())
        header[name] = {"dtype": _NAMES[dtype], "shape": list(shape), "data_offsets": [offset, offset + size]}
        offset += size
    text = json.dumps(header, separators=(",", ":")).encode()
    text += b" " * (-len(text) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(text)) + text)
        for name, dtype, shape in entries:
            t = produce(name)
            if t.dtype != dtype or tuple(t.shape) != tuple(shape):
                raise InputError(f"tensor '{name}' came out {t.dtype} {tuple(t.shape)}, expected {dtype} {tuple(shape)}")
            f.write(memoryview(t.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy()))
    return 8 + len(text) + offset
