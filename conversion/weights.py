"""Reading weight files lazily and writing safetensors shards, so that a conversion holds one group of files at a time.

Safetensors files are memory-mapped and read tensor by tensor. Pickles (`.bin`) are read with
`torch.load(weights_only=True)`, memory-mapped when they are in the zip format; a pickle that needs anything beyond
tensors and plain containers is refused.
"""

import json
import os
import pickle
import zipfile
from abc import ABC, abstractmethod
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file

SAFETENSORS_FLOAT_DTYPES = {"F64": torch.float64, "F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16}


class LazyTensors(ABC):
    """The tensors of one weights file, by name; shapes and dtypes are known without reading the data."""

    def __init__(self, path: Path):
        self.path = path

    @abstractmethod
    def keys(self) -> list[str]:
        """The tensor names, in file order."""

    @abstractmethod
    def shape(self, key: str) -> tuple[int, ...]:
        """The tensor's shape."""

    @abstractmethod
    def float_dtype(self, key: str) -> torch.dtype | None:
        """The tensor's dtype if it is a floating-point one, else `None`."""

    @abstractmethod
    def tensor(self, key: str) -> torch.Tensor:
        """The tensor itself (read from the file on first access)."""


class SafetensorsTensors(LazyTensors):
    """The tensors of an open safetensors file."""

    def __init__(self, path: Path, handle):
        super().__init__(path)
        self.handle = handle

    def keys(self) -> list[str]:
        return list(self.handle.keys())

    def shape(self, key: str) -> tuple[int, ...]:
        return tuple(self.handle.get_slice(key).get_shape())

    def float_dtype(self, key: str) -> torch.dtype | None:
        return SAFETENSORS_FLOAT_DTYPES.get(self.handle.get_slice(key).get_dtype())

    def tensor(self, key: str) -> torch.Tensor:
        return self.handle.get_tensor(key)


class PickledTensors(LazyTensors):
    """The tensors of a state dict loaded from a pickle (memory-mapped when possible)."""

    def __init__(self, path: Path, state_dict: dict[str, torch.Tensor]):
        super().__init__(path)
        self.state_dict = state_dict

    def keys(self) -> list[str]:
        return list(self.state_dict)

    def shape(self, key: str) -> tuple[int, ...]:
        return tuple(self.state_dict[key].shape)

    def float_dtype(self, key: str) -> torch.dtype | None:
        dtype = self.state_dict[key].dtype
        return dtype if dtype.is_floating_point else None

    def tensor(self, key: str) -> torch.Tensor:
        return self.state_dict[key]


def load_pickled_state_dict(path: Path) -> dict[str, torch.Tensor]:
    """
    The state dict in a PyTorch pickle, read by `torch.load(weights_only=True)`, memory-mapped for zip-format files.

    Raises:
        `ValueError`: the file is not a plain state dict of tensors, or the pickle needs more than tensors.
    """
    try:
        state_dict = torch.load(path, map_location="cpu", weights_only=True, mmap=zipfile.is_zipfile(path))
    except pickle.UnpicklingError as error:
        reason = str(error).strip().splitlines()[0]
        raise ValueError(
            f"Refusing to load {path}: it is not a plain pickle of tensors, and only "
            f"torch.load(weights_only=True) is used ({reason})"
        ) from error
    except (RuntimeError, KeyError, EOFError, OSError) as error:
        raise ValueError(f"{path} is not a readable PyTorch weights file: {error}") from error
    if not isinstance(state_dict, dict) or not all(isinstance(value, torch.Tensor) for value in state_dict.values()):
        raise ValueError(f"{path} does not hold a state dict (a mapping of names to tensors)")
    return state_dict


def open_safetensors(path: Path):
    """`safe_open(path)`, with a `ValueError` naming the file when its header is unreadable."""
    try:
        return safe_open(path, framework="pt")
    except SafetensorError as error:
        raise ValueError(f"{path} is not a readable safetensors file: {error}") from error


@contextmanager
def open_weights(path: Path) -> Iterator[LazyTensors]:
    """Opens a `.safetensors` or pickled (`.bin`) weights file for lazy reading; closing releases its memory."""
    if not path.is_file():
        raise FileNotFoundError(f"{path} is missing")
    if path.suffix == ".safetensors":
        with open_safetensors(path) as handle:
            yield SafetensorsTensors(path, handle)
        return
    state_dict = load_pickled_state_dict(path)
    try:
        yield PickledTensors(path, state_dict)
    finally:
        state_dict.clear()


def shard_file_name(stem: str, index: int, count: int) -> str:
    """The Hugging Face name of shard `index` (0-based) of `count`: `<stem>-00001-of-00003.safetensors`."""
    return f"{stem}-{index + 1:05d}-of-{count:05d}.safetensors"


class ShardedSafetensorsWriter:
    """
    Writes tensors to `<folder>/<stem>.safetensors`, or, when there is more than one shard, to numbered shards plus
    `<stem>.safetensors.index.json`, the layout `from_pretrained` of transformers and diffusers reads.

    A shard is written when it would grow past `max_shard_bytes` and whenever `end_shard` is called, so the writer
    never holds more than one shard of tensors.
    """

    def __init__(self, folder: Path, stem: str, max_shard_bytes: int):
        self.folder = folder
        self.stem = stem
        self.max_shard_bytes = max_shard_bytes
        self.pending: dict[str, torch.Tensor] = {}
        self.pending_bytes = 0
        self.shard_keys: list[list[str]] = []
        self.total_bytes = 0

    def add(self, key: str, tensor: torch.Tensor):
        """Queues `tensor` under `key`, writing the current shard first if `tensor` would make it too big."""
        size = tensor.numel() * tensor.element_size()
        if self.pending and self.pending_bytes + size > self.max_shard_bytes:
            self.end_shard()
        self.pending[key] = tensor.contiguous()
        self.pending_bytes += size

    def end_shard(self):
        """Writes the queued tensors as one shard (nothing when none are queued)."""
        if not self.pending:
            return
        self.folder.mkdir(parents=True, exist_ok=True)
        save_file(self.pending, self.temporary_shard_path(len(self.shard_keys)), metadata={"format": "pt"})
        self.shard_keys.append(list(self.pending))
        self.total_bytes += self.pending_bytes
        self.pending, self.pending_bytes = {}, 0

    def close(self) -> list[str]:
        """Writes the last shard, gives the shards their final names and writes the index; returns the file names."""
        self.end_shard()
        count = len(self.shard_keys)
        if count == 1:
            names = [f"{self.stem}.safetensors"]
        else:
            names = [shard_file_name(self.stem, index, count) for index in range(count)]
        for index, name in enumerate(names):
            os.replace(self.temporary_shard_path(index), self.folder / name)
        if count > 1:
            self.write_index(names)
        return names

    def temporary_shard_path(self, index: int) -> Path:
        return self.folder / f".{self.stem}.shard{index}.safetensors"

    def write_index(self, names: list[str]):
        weight_map = {key: name for name, keys in zip(names, self.shard_keys, strict=True) for key in keys}
        index = {"metadata": {"total_size": self.total_bytes}, "weight_map": dict(sorted(weight_map.items()))}
        (self.folder / f"{self.stem}.safetensors.index.json").write_text(json.dumps(index, indent=2) + "\n")
