"""Where training documents come from: readers of files, tar shards and `datasets`, and the record layouts people have.

A [`DataSource`] names a corpus; its reader splits it into shards and reads one shard from a saved position:

| reader | accepts | shards | position |
|---|---|---|---|
| `jsonl` | `.jsonl` files, globs, brace patterns (`docs_{00000..00099}.jsonl`) | byte ranges of the files | byte offset |
| `webdataset` | `.tar` shards, globs, brace patterns (img2dataset's layout) | the tar files | samples read |
| `hf` | a `datasets` folder (`save_to_disk`), `.parquet`/`.arrow`/`.json` files, or a Hub name | the dataset's shards | examples read |

Nothing is read up front: a JSON Lines shard is a byte range found by seeking, a tar shard is streamed with
webdataset, a `datasets` dataset is loaded in streaming mode (or memory-mapped from a `save_to_disk` folder).

Every example, whatever the reader, is mapped to a DreamLLM record (`{"segments": ...}` or `{"messages": ...}`, see
`dreamllm.training.data`) by its fields:

| layout | fields | record |
|---|---|---|
| DreamLLM | `segments`, or `messages` (images inside the content items) | as is |
| TRL vision-language | `messages` with `{"type": "image"}` items, and `images` | the items take `images` in order |
| LLaVA instructions | `conversations` (`from`: `human`/`gpt`/`system`, `value` with `<image>`), `image` | a conversation; `<image>` becomes an image item (or, if absent, the image opens the first user turn) |
| MMC4 | `text_list`, `image_info` (`image_name`, `matched_text_index`) | segments: the sentences up to each image's matched sentence joined by spaces, then the image (as the original's interleaved loader) |
| OBELICS | `texts` and `images`, parallel lists with `None` | segments in order |
| image-text pair | an image (`image`, `jpg`, `jpeg`, `png`, `webp`) and a caption (`caption`, `text`, `txt`, or `json.caption`) | `[caption, image]` (creation) or `[image, caption]` (comprehension), by `pairs` |

Image values may be PIL images, encoded bytes, `{"bytes": ..., "path": ...}` dicts (`datasets` images), or names:
the name of a member of the same tar sample (`0.jpg`, or an MMC4 `image_name` stored as `<stem>.jpg`), else a path
relative to `image_folder` (default: the folder of the data file).
"""

import glob
import json
import os
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import PIL.Image

from .data import DocumentError

READERS = ("jsonl", "webdataset", "hf")
PAIR_MODES = ("random", "creation", "comprehension")
IMAGE_FIELDS = ("image", "jpg", "jpeg", "png", "webp")
CAPTION_FIELDS = ("caption", "text", "txt")
LLAVA_ROLES = {"human": "user", "user": "user", "gpt": "assistant", "assistant": "assistant", "system": "system"}
JSONL_CHUNK_BYTES = 1 << 28
SPEC_PATTERN = re.compile(r"^(?:(?P<reader>jsonl|webdataset|hf):)?(?P<path>.+?)(?:@(?P<weight>[^@/]+))?$")


@dataclass(frozen=True)
class DataSource:
    """
    One corpus of a training mix.

    Args:
        path (`str`): Files (globs and brace patterns allowed), a folder, or a Hub dataset name (with `reader="hf"`).
        reader (`str`, *optional*): `"jsonl"`, `"webdataset"` or `"hf"`; chosen from the path when not given.
        weight (`float`, *optional*, defaults to 1): Share of the mix, relative to the other sources' weights.
        image_folder (`str`, *optional*): Folder that image names are relative to (default: the data file's).
        pairs (`str`, *optional*, defaults to `"random"`): What an image-text pair teaches: `"creation"`,
            `"comprehension"`, or either with probability 1/2 (`"random"`, as the original DreamLLM).
    """

    path: str
    reader: str | None = None
    weight: float = 1.0
    image_folder: str | None = None
    pairs: str = "random"

    def __post_init__(self):
        if self.reader is not None and self.reader not in READERS:
            raise ValueError(f"reader must be one of {READERS}, got {self.reader!r}")
        if not (isinstance(self.weight, (int, float)) and 0 < self.weight < float("inf")):
            raise ValueError(f"the weight of {self.path} must be a positive number, got {self.weight!r}")
        if self.pairs not in PAIR_MODES:
            raise ValueError(f"pairs must be one of {PAIR_MODES}, got {self.pairs!r}")

    @classmethod
    def parse(cls, spec: str, **kwargs) -> "DataSource":
        """A source from `[READER:]PATH[@WEIGHT]`, e.g. `webdataset:/data/laion/{00000..00999}.tar@10`."""
        match = SPEC_PATTERN.match(spec)
        weight = match.group("weight")
        try:
            weight = 1.0 if weight is None else float(weight)
        except ValueError:
            raise ValueError(f"{spec!r}: the weight after '@' must be a number, got {weight!r}") from None
        return cls(match.group("path"), reader=match.group("reader"), weight=weight, **kwargs)

    @property
    def reader_name(self) -> str:
        """The reader, given or chosen from the path: `.tar` shards, JSON Lines files, or `datasets`."""
        if self.reader is not None:
            return self.reader
        if ".tar" in self.path:
            return "webdataset"
        if ".jsonl" in self.path:
            return "jsonl"
        return "hf"

    def open(self) -> "ShardReader":
        """The reader of this source. Raises a `FileNotFoundError` naming the path when it matches no file."""
        reader = {"jsonl": JsonLinesReader, "webdataset": WebDatasetReader, "hf": HFDatasetReader}[self.reader_name]
        return reader(self)


def expand_paths(pattern: str) -> list[Path]:
    """The files a path, glob or brace pattern names, in order; a `FileNotFoundError` when there are none."""
    from webdataset.shardlists import expand_urls

    paths = []
    for expanded in expand_urls(pattern):
        matches = sorted(glob.glob(expanded)) if glob.has_magic(expanded) else [expanded]
        paths += [Path(match) for match in matches if Path(match).is_file()]
    if not paths:
        raise FileNotFoundError(f"no data file matches {pattern}")
    return paths


class ShardReader:
    """Splits a source into shards and reads one shard from a position (see the module docstring)."""

    def __init__(self, source: DataSource):
        self.source = source

    def shards(self, num_readers: int) -> list:
        """The shards (JSON-serializable descriptions); at least `num_readers` when the source can be cut finer."""
        raise NotImplementedError

    def read(self, shard, position) -> Iterator[tuple[object, dict, "ImageResolver"]]:
        """Yields `(position after the example, example, its image resolver)` from `position` (`None`: the start)."""
        raise NotImplementedError

    def peek(self) -> tuple[dict, "ImageResolver", str]:
        """The first example, its resolver and where it is (for an early, clear error on a wrong format)."""
        shard = self.shards(1)[0]
        for _, example, resolver in self.read(shard, None):
            return example, resolver, self.location(shard)
        raise ValueError(f"{self.source.path} holds no example")

    def location(self, shard) -> str:
        return str(self.source.path)

    def resolver(self, folder: Path, members: dict | None = None) -> "ImageResolver":
        return ImageResolver(Path(self.source.image_folder) if self.source.image_folder else folder, members or {})


class JsonLinesReader(ShardReader):
    """JSON Lines files, split into byte ranges; a line belongs to the range its first byte is in."""

    def __init__(self, source: DataSource):
        super().__init__(source)
        self.files = expand_paths(source.path)

    def shards(self, num_readers: int) -> list:
        per_file = max(1, -(-num_readers // len(self.files)))
        shards = []
        for index, file in enumerate(self.files):
            chunks = max(per_file, -(-file.stat().st_size // JSONL_CHUNK_BYTES))
            shards += [[index, chunk, chunks] for chunk in range(chunks)]
        return shards

    def read(self, shard, position):
        index, chunk, chunks = shard
        file = self.files[index]
        size = file.stat().st_size
        start, end = size * chunk // chunks, size * (chunk + 1) // chunks
        resolver = self.resolver(file.parent)
        with file.open("rb") as lines:
            if position is not None:
                lines.seek(position)
            elif start:
                lines.seek(start - 1)
                lines.readline()  # the line that started in the previous range
            while lines.tell() < end:
                line = lines.readline()
                if not line:
                    break
                if line.strip():
                    try:
                        example = json.loads(line)
                    except ValueError as error:
                        example = MalformedExample(f"{file} at byte {lines.tell() - len(line)}: {error}")
                    yield lines.tell(), example, resolver

    def location(self, shard) -> str:
        return f"{self.files[shard[0]]}:1"


class WebDatasetReader(ShardReader):
    """webdataset tar shards: the files of a sample share a key; `json` is parsed, text fields decoded, images kept
    encoded."""

    TEXT_EXTENSIONS = ("txt", "text", "caption")

    def __init__(self, source: DataSource):
        super().__init__(source)
        self.files = expand_paths(source.path)

    def shards(self, num_readers: int) -> list:
        return [str(file) for file in self.files]

    def read(self, shard, position):
        from webdataset.tariterators import tarfile_samples

        skip = position or 0
        for count, sample in enumerate(tarfile_samples([{"url": shard}]), start=1):
            if count <= skip:
                continue
            yield count, *self.example(sample, Path(shard).parent)

    def example(self, sample: dict, folder: Path) -> tuple[dict, "ImageResolver"]:
        members = {key: value for key, value in sample.items() if not key.startswith("__")}
        example = {}
        if "json" in members:
            try:
                example.update(json.loads(members.pop("json")))
            except ValueError as error:
                return MalformedExample(f"{sample.get('__url__')} sample {sample.get('__key__')}: {error}"), None
        for key, value in members.items():
            example[key] = value.decode("utf-8") if key in self.TEXT_EXTENSIONS else value
        return example, self.resolver(folder, members)


class HFDatasetReader(ShardReader):
    """A Hugging Face `datasets` dataset, streamed; images are decoded only when a document is built."""

    BUILDERS = {".parquet": "parquet", ".arrow": "arrow", ".json": "json", ".csv": "csv"}

    def __init__(self, source: DataSource):
        super().__init__(source)
        self._dataset = None

    @property
    def folder(self) -> Path:
        path = Path(self.source.path)
        return path if path.is_dir() else path.parent

    def dataset(self):
        """The dataset as a `datasets.IterableDataset` (loaded on first use, in the process that reads it)."""
        if self._dataset is None:
            dataset = self.load()
            self._dataset = dataset.decode(False) if dataset.features is not None else dataset
        return self._dataset

    def load(self):
        import datasets

        path = Path(self.source.path)
        if path.is_dir() and any((path / name).is_file() for name in ("state.json", "dataset_dict.json")):
            dataset = datasets.load_from_disk(str(path))
            if isinstance(dataset, datasets.DatasetDict):
                dataset = dataset["train"]
            return dataset.to_iterable_dataset(num_shards=min(len(dataset), 1024) or 1)
        if path.is_dir() or self.source.reader == "hf" and not glob.has_magic(self.source.path) and not path.suffix:
            return datasets.load_dataset(self.source.path, split="train", streaming=True)
        files = expand_paths(self.source.path)
        builder = self.BUILDERS.get(files[0].suffix)
        if builder is None:
            raise ValueError(f"{files[0]}: datasets reads {sorted(self.BUILDERS)} files, not {files[0].suffix!r}")
        return datasets.load_dataset(builder, data_files=[str(file) for file in files], split="train", streaming=True)

    def shards(self, num_readers: int) -> list:
        return list(range(self.dataset().num_shards))

    def read(self, shard, position):
        dataset = self.dataset().shard(num_shards=self.dataset().num_shards, index=shard, contiguous=True)
        skip = position or 0
        if skip:
            dataset = dataset.skip(skip)
        resolver = self.resolver(self.folder)
        for count, example in enumerate(dataset, start=skip + 1):
            yield count, example, resolver


class MalformedExample(str):
    """Stands for an example that could not be parsed; mapping it raises a "malformed record" error."""


class ImageResolver:
    """Turns the image values of an example into what `load_image` reads: PIL images, bytes or paths."""

    def __init__(self, folder: Path, members: dict[str, bytes]):
        self.folder = folder
        self.members = members

    def __call__(self, value):
        if isinstance(value, (PIL.Image.Image, bytes)):
            return value
        if isinstance(value, dict) and ("bytes" in value or "path" in value):
            return value["bytes"] if value.get("bytes") is not None else self(value["path"])
        if not isinstance(value, (str, os.PathLike)) or not str(value):
            raise DocumentError("missing field", f"an image is {value!r:.60}, not an image, bytes or a name")
        name = str(value)
        member = self.member(name)
        return member if member is not None else self.folder / name

    def member(self, name: str) -> bytes | None:
        stem = name.rsplit(".", 1)[0]
        for key in (name, f"{stem}.jpg"):
            if key in self.members:
                return self.members[key]
        return next((data for key, data in self.members.items() if key.startswith(f"{stem}.")), None)


def to_record(example, resolve: ImageResolver, pairs: str = "random", coin: Callable[[], bool] = lambda: True) -> dict:
    """
    The DreamLLM record of `example` by its layout (see the module docstring). `coin()` decides a `"random"` pair
    (true: creation).

    Raises:
        [`DocumentError`]: "malformed record" for an example that could not be parsed, "missing field" when no
            layout matches or a field has the wrong type.
    """
    if isinstance(example, MalformedExample):
        raise DocumentError("malformed record", str(example))
    if not isinstance(example, dict):
        raise DocumentError("missing field", f"an example is a JSON object, got {type(example).__name__}")
    try:
        return layout_to_record(example, resolve, pairs, coin)
    except (KeyError, TypeError, AttributeError, IndexError) as error:
        raise DocumentError("missing field", f"{type(error).__name__}: {error}") from error


def layout_to_record(example: dict, resolve: ImageResolver, pairs: str, coin: Callable[[], bool]) -> dict:
    if "segments" in example:
        return {"segments": [dict(s, image=resolve(s["image"])) if "image" in s else s for s in example["segments"]]}
    if "messages" in example:
        return {"messages": messages_with_images(example["messages"], example.get("images"), resolve)}
    if "conversations" in example:
        return {"messages": llava_messages(example["conversations"], example.get("image"), resolve)}
    if "text_list" in example and "image_info" in example:
        return {"segments": mmc4_segments(example["text_list"], example["image_info"], resolve)}
    if "texts" in example and "images" in example:
        return {"segments": obelics_segments(example["texts"], example["images"], resolve)}
    image_field = next((name for name in IMAGE_FIELDS if example.get(name) is not None), None)
    caption = next((example[name] for name in CAPTION_FIELDS if isinstance(example.get(name), str)), None)
    if image_field is not None and caption is not None:
        creation = pairs == "creation" or pairs == "random" and coin()
        parts = [{"text": caption}, {"image": resolve(example[image_field])}]
        return {"segments": parts if creation else parts[::-1]}
    raise DocumentError("missing field", f"no known layout has the fields {sorted(example)[:10]}")


def messages_with_images(messages: list, images: list | None, resolve: ImageResolver) -> list:
    """Our messages with image items resolved; items without a value take `images` in order (the TRL layout)."""
    remaining = iter(images or [])
    converted = []
    for message in messages:
        content = message["content"]
        if isinstance(content, list):
            content = [
                {"type": "image", "image": resolve(item["image"] if item.get("image") is not None else next(remaining))}
                if item.get("type") == "image"
                else {key: value for key, value in item.items() if value is not None}
                for item in content
            ]
        converted.append({"role": message["role"], "content": content})
    return converted


def llava_messages(conversations: list, image, resolve: ImageResolver) -> list:
    """A LLaVA conversation as messages; `<image>` placeholders become image items."""
    images = [image] if isinstance(image, (str, dict, bytes)) else list(image or [])
    remaining = iter(images)
    messages = []
    for turn in conversations:
        role = LLAVA_ROLES[turn["from"]]
        pieces = re.split(r"<image>\n?", turn["value"])
        content = []
        for index, piece in enumerate(pieces):
            if index:
                content.append({"type": "image", "image": resolve(next(remaining))})
            if piece.strip():
                content.append({"type": "text", "text": piece.strip("\n")})
        messages.append({"role": role, "content": content})
    unplaced = [{"type": "image", "image": resolve(value)} for value in remaining]
    first_user = next((message for message in messages if message["role"] == "user"), None)
    if unplaced and first_user is not None:
        first_user["content"] = unplaced + first_user["content"]
    return messages


def mmc4_segments(text_list: list, image_info: list, resolve: ImageResolver) -> list:
    """MMC4 documents: each image follows the sentences up to its `matched_text_index`, joined by spaces."""
    texts = [text.strip() for text in text_list]
    ordered = sorted(enumerate(image_info), key=lambda item: (item[1]["matched_text_index"], item[0]))
    segments, start = [], 0
    for _, info in ordered:
        end = max(start, info["matched_text_index"] + 1)
        if " ".join(texts[start:end]).strip():
            segments.append({"text": " ".join(texts[start:end])})
        segments.append({"image": resolve(info["image_name"])})
        start = end
    if " ".join(texts[start:]).strip():
        segments.append({"text": " ".join(texts[start:])})
    return segments


def obelics_segments(texts: list, images: list, resolve: ImageResolver) -> list:
    """OBELICS documents: parallel lists where each position holds a text or an image."""
    segments = []
    for text, image in zip(texts, images, strict=True):
        if image is not None:
            segments.append({"image": resolve(image)})
        elif text:
            segments.append({"text": text})
    return segments


__all__ = ["DataSource", "ImageResolver", "to_record"]
