"""Reading weight files in chunks and writing safetensors shards in place, so that a conversion never holds a whole
tensor, file or shard in memory.

Files are read with plain file reads, chunk by chunk (a memory map would keep every page it has read resident until
the file is closed): safetensors files at the offsets of their header, pickles (`.bin`) at the offsets that
`torch.load(weights_only=True, map_location="meta")` records for the storages of a zip-format file, as
`torch.distributed.checkpoint` reads them. A pickle whose tensors cannot be read that way (the legacy format, a
compressed archive, views with strides, another byte order) is loaded whole, memory-mapped when it is a zip file. A
pickle that needs anything beyond tensors and plain containers is refused. Output shards are laid out in advance from
the tensors' names, dtypes and shapes: each file gets its header first and then every tensor's bytes at their place,
as they arrive.
"""

import json
import os
import pickle
import struct
import sys
import zipfile
from abc import ABC, abstractmethod
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from math import prod
from pathlib import Path
from typing import BinaryIO

import torch
from safetensors import SafetensorError, safe_open

# The safetensors dtype codes of the tensors a checkpoint holds.
SAFETENSORS_DTYPES = {
    "F64": torch.float64, "F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16, "I64": torch.int64,
    "I32": torch.int32, "I16": torch.int16, "I8": torch.int8, "U8": torch.uint8, "BOOL": torch.bool,
}  # fmt: skip
SAFETENSORS_CODES = {dtype: code for code, dtype in SAFETENSORS_DTYPES.items()}
HEADER_LENGTH_BYTES = 8
HEADER_ALIGNMENT = 8
# The most bytes of one tensor read (and, cast, written) at once.
CHUNK_BYTES = 4 * 2**20


@dataclass(frozen=True)
class StoredTensor:
    """A tensor as a safetensors file stores it: name, dtype and shape."""

    key: str
    dtype: torch.dtype
    shape: tuple[int, ...]

    @property
    def nbytes(self) -> int:
        return prod(self.shape) * self.dtype.itemsize


def chunk_elements(dtype: torch.dtype) -> int:
    """How many elements of `dtype` one chunk holds."""
    return max(1, CHUNK_BYTES // dtype.itemsize)


class LazyTensors(ABC):
    """The tensors of one weights file, by name; names, shapes and dtypes are known without reading the data."""

    def __init__(self, path: Path):
        self.path = path

    @abstractmethod
    def keys(self) -> list[str]:
        """The tensor names, in file order."""

    @abstractmethod
    def shape(self, key: str) -> tuple[int, ...]:
        """The tensor's shape."""

    @abstractmethod
    def dtype(self, key: str) -> torch.dtype:
        """The tensor's stored dtype; a `ValueError` naming the file and tensor if safetensors cannot store it."""

    @abstractmethod
    def chunks(self, key: str) -> Iterator[torch.Tensor]:
        """The tensor's elements in row-major order, as 1-D tensors of at most `CHUNK_BYTES` each."""


class SafetensorsTensors(LazyTensors):
    """The tensors of a safetensors file, read from its header and then chunk by chunk with plain reads."""

    def __init__(self, path: Path, file: BinaryIO):
        super().__init__(path)
        self.file = file
        (header_length,) = struct.unpack("<Q", file.read(HEADER_LENGTH_BYTES))
        header = json.loads(file.read(header_length))
        header.pop("__metadata__", None)
        self.entries = dict(sorted(header.items(), key=lambda item: item[1]["data_offsets"][0]))
        self.data_start = HEADER_LENGTH_BYTES + header_length

    def keys(self) -> list[str]:
        return list(self.entries)

    def shape(self, key: str) -> tuple[int, ...]:
        return tuple(self.entries[key]["shape"])

    def dtype(self, key: str) -> torch.dtype:
        code = self.entries[key]["dtype"]
        if code not in SAFETENSORS_DTYPES:
            raise ValueError(f"{self.path}: {key!r} is stored as {code}, which a DreamLLM checkpoint never holds")
        return SAFETENSORS_DTYPES[code]

    def chunks(self, key: str) -> Iterator[torch.Tensor]:
        start, end = self.entries[key]["data_offsets"]
        return read_chunks(self.file, self.path, key, self.data_start + start, end - start, self.dtype(key))


def read_chunks(
    file: BinaryIO, path: Path, key: str, position: int, nbytes: int, dtype: torch.dtype
) -> Iterator[torch.Tensor]:
    """The `nbytes` bytes at `position` of `file` (tensor `key` of `path`), as 1-D `dtype` chunks of `CHUNK_BYTES`."""
    file.seek(position)
    step = chunk_elements(dtype) * dtype.itemsize
    for offset in range(0, nbytes, step):
        chunk = torch.empty(min(step, nbytes - offset), dtype=torch.uint8)
        if file.readinto(chunk.numpy()) != chunk.numel():
            raise ValueError(f"{path} is truncated: {key!r} ends past the end of the file")
        yield chunk.view(dtype)


class PickledTensors(LazyTensors):
    """The tensors of a state dict loaded whole from a pickle (memory-mapped for a zip file)."""

    def __init__(self, path: Path, state_dict: dict[str, torch.Tensor]):
        super().__init__(path)
        self.state_dict = state_dict

    def keys(self) -> list[str]:
        return list(self.state_dict)

    def shape(self, key: str) -> tuple[int, ...]:
        return tuple(self.state_dict[key].shape)

    def dtype(self, key: str) -> torch.dtype:
        dtype = self.state_dict[key].dtype
        if dtype not in SAFETENSORS_CODES:
            raise ValueError(f"{self.path}: {key!r} is stored as {dtype}, which a DreamLLM checkpoint never holds")
        return dtype

    def chunks(self, key: str) -> Iterator[torch.Tensor]:
        elements = self.state_dict[key].reshape(-1)
        step = chunk_elements(elements.dtype)
        for start in range(0, elements.numel(), step):
            yield elements[start : start + step]


class OffsetPickledTensors(PickledTensors):
    """The tensors of a zip-format pickle loaded on the meta device, each read from the file at its storage's offset."""

    def __init__(self, path: Path, state_dict: dict[str, torch.Tensor], file: BinaryIO):
        super().__init__(path, state_dict)
        self.file = file

    def chunks(self, key: str) -> Iterator[torch.Tensor]:
        tensor = self.state_dict[key]
        position = tensor.untyped_storage()._checkpoint_offset + tensor.storage_offset() * tensor.element_size()
        return read_chunks(self.file, self.path, key, position, tensor.nbytes, self.dtype(key))


def readable_by_offset(path: Path, state_dict: dict[str, torch.Tensor]) -> bool:
    """Whether the tensors of a zip-format pickle, loaded on the meta device, can be read at their offsets: each is
    contiguous, the archive stores its data uncompressed and in this machine's byte order (little when unrecorded)."""
    with zipfile.ZipFile(path) as archive:
        records = archive.infolist()
        byte_order = next((archive.read(record) for record in records if record.filename.endswith("/byteorder")), None)
    stored = all(record.compress_type == zipfile.ZIP_STORED for record in records if "/data/" in record.filename)
    native = (byte_order or b"little").decode() == sys.byteorder
    offsets_known = all(value.untyped_storage()._checkpoint_offset is not None for value in state_dict.values())
    return stored and native and offsets_known and all(value.is_contiguous() for value in state_dict.values())


def load_pickled_state_dict(path: Path, map_location: str = "cpu") -> dict[str, torch.Tensor]:
    """
    The state dict in a PyTorch pickle, read by `torch.load(weights_only=True)`: on `map_location`, memory-mapped
    for a zip-format file on the CPU.

    Raises:
        `ValueError`: the file is not a plain state dict of tensors, or the pickle needs more than tensors.
    """
    mmap = map_location == "cpu" and zipfile.is_zipfile(path)
    try:
        state_dict = torch.load(path, map_location=map_location, weights_only=True, mmap=mmap)
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


def check_safetensors(path: Path):
    """Raises a `ValueError` naming the file when safetensors cannot read its header (or the header is invalid)."""
    try:
        with safe_open(path, framework="pt"):
            pass
    except SafetensorError as error:
        raise ValueError(f"{path} is not a readable safetensors file: {error}") from error


@contextmanager
def open_weights(path: Path) -> Iterator[LazyTensors]:
    """Opens a `.safetensors` or pickled (`.bin`) weights file for lazy reading; closing releases its memory."""
    if not path.is_file():
        raise FileNotFoundError(f"{path} is missing")
    if path.suffix == ".safetensors":
        check_safetensors(path)
        with path.open("rb") as file:
            yield SafetensorsTensors(path, file)
        return
    if zipfile.is_zipfile(path):
        state_dict = load_pickled_state_dict(path, map_location="meta")
        if readable_by_offset(path, state_dict):
            with path.open("rb") as file:
                yield OffsetPickledTensors(path, state_dict, file)
            return
    state_dict = load_pickled_state_dict(path)
    try:
        yield PickledTensors(path, state_dict)
    finally:
        state_dict.clear()


def shard_file_name(stem: str, index: int, count: int, suffix: str = ".safetensors") -> str:
    """The Hugging Face name of shard `index` (0-based) of `count`: `<stem>-00001-of-00003.safetensors`."""
    return f"{stem}-{index + 1:05d}-of-{count:05d}{suffix}"


class SafetensorsShard:
    """
    One safetensors file whose tensors are known in advance: its header is written first, then each tensor's bytes at
    their offset, in any order. Tensors are laid out as `safetensors.torch.save_file` does (widest dtype first, then
    by name), so every tensor is aligned to its element size.
    """

    def __init__(self, path: Path, tensors: list[StoredTensor]):
        self.path = path
        self.tensors = sorted(tensors, key=lambda tensor: (-tensor.dtype.itemsize, tensor.key))
        self.offsets, offset = {}, 0
        for tensor in self.tensors:
            self.offsets[tensor.key] = (offset, offset + tensor.nbytes)
            offset += tensor.nbytes
        self.header = self.encoded_header()
        self.unwritten = set(self.offsets)

    def encoded_header(self) -> bytes:
        """The length-prefixed JSON header, padded with spaces to a multiple of 8 bytes as safetensors pads it."""
        header = {"__metadata__": {"format": "pt"}} | {
            tensor.key: {
                "dtype": SAFETENSORS_CODES[tensor.dtype],
                "shape": list(tensor.shape),
                "data_offsets": list(self.offsets[tensor.key]),
            }
            for tensor in self.tensors
        }
        encoded = json.dumps(header, separators=(",", ":")).encode()
        encoded += b" " * (-len(encoded) % HEADER_ALIGNMENT)
        return struct.pack("<Q", len(encoded)) + encoded

    @property
    def total_bytes(self) -> int:
        return sum(tensor.nbytes for tensor in self.tensors)

    def create(self):
        """Writes the header and extends the file to its final size."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with self.path.open("wb") as file:
            file.write(self.header)
            file.truncate(len(self.header) + self.total_bytes)

    def write(self, key: str, chunks: Iterable[torch.Tensor]):
        """Writes the bytes of tensor `key` from its chunks (in row-major order, already in the stored dtype)."""
        start, end = self.offsets[key]
        if not self.path.exists():
            self.create()
        with self.path.open("r+b") as file:
            file.seek(len(self.header) + start)
            written = sum(file.write(chunk.contiguous().view(torch.uint8).numpy()) for chunk in chunks)
        if written != end - start:
            raise ValueError(f"{key!r} has {written} bytes of data, its dtype and shape need {end - start}")
        self.unwritten.discard(key)


class ShardedSafetensorsWriter:
    """
    Writes a known list of tensors to `<folder>/<stem>.safetensors`, or, when they need more than one shard, to
    numbered shards plus `<stem>.safetensors.index.json`, the layout `from_pretrained` of transformers and diffusers
    reads. Tensors are packed into shards in the order given, a new shard starting when the next tensor would make the
    current one larger than `max_shard_bytes` (a tensor larger than that gets a shard of its own). Each shard is
    written under a hidden name and renamed when the writer is closed.
    """

    def __init__(self, folder: Path, stem: str, tensors: list[StoredTensor], max_shard_bytes: int):
        self.folder = folder
        self.stem = stem
        groups = pack_shards(tensors, max_shard_bytes)
        self.shards = [
            SafetensorsShard(folder / f".{stem}.shard{index}.safetensors", group) for index, group in enumerate(groups)
        ]
        self.shard_of = {tensor.key: shard for shard in self.shards for tensor in shard.tensors}

    def write(self, key: str, chunks: Iterable[torch.Tensor]):
        """Writes tensor `key` (one of those given) from its chunks, in its stored dtype."""
        self.shard_of[key].write(key, chunks)

    def close(self) -> list[str]:
        """Gives the shards their final names and writes the index; returns the file names.

        Raises:
            `ValueError`: a tensor was never written.
        """
        unwritten = sorted(key for shard in self.shards for key in shard.unwritten)
        if unwritten:
            raise ValueError(f"{self.folder / self.stem}: tensors never written: {unwritten[:10]}")
        count = len(self.shards)
        if count == 1:
            names = [f"{self.stem}.safetensors"]
        else:
            names = [shard_file_name(self.stem, index, count) for index in range(count)]
        for shard, name in zip(self.shards, names, strict=True):
            if not shard.path.exists():
                shard.create()
            os.replace(shard.path, self.folder / name)
        if count > 1:
            self.write_index(names)
        return names

    def write_index(self, names: list[str]):
        weight_map = {
            tensor.key: name for name, shard in zip(names, self.shards, strict=True) for tensor in shard.tensors
        }
        total_size = sum(shard.total_bytes for shard in self.shards)
        index = {"metadata": {"total_size": total_size}, "weight_map": dict(sorted(weight_map.items()))}
        (self.folder / f"{self.stem}.safetensors.index.json").write_text(json.dumps(index, indent=2) + "\n")


def pack_shards(tensors: list[StoredTensor], max_shard_bytes: int) -> list[list[StoredTensor]]:
    """Splits `tensors`, in order, into consecutive groups of at most `max_shard_bytes` (or one oversized tensor)."""
    groups, size = [[]], 0
    for tensor in tensors:
        if groups[-1] and size + tensor.nbytes > max_shard_bytes:
            groups.append([])
            size = 0
        groups[-1].append(tensor)
        size += tensor.nbytes
    return groups
