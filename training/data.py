"""Training data for DreamLLM: JSON Lines documents, their token layout and the training batch.

One document per line, in one of two forms (image paths are relative to the JSON Lines file):

- `{"segments": [{"text": "..."}, {"image": "cat.png"}, {"text": "..."}]}`: an interleaved document, an image-text
  pair or a caption, segments in reading order;
- `{"messages": [{"role": "user", "content": [{"type": "image", "image": "cat.png"}, {"type": "text", "text":
  "..."}]}, {"role": "assistant", "content": "..."}]}`: a Vicuna v1.1 conversation (an optional first "system"
  message, then user and assistant turns); `content` is a string or a list of text and image items.

How a document becomes tokens and labels (DreamLLM's rules):

- A document is `<s>`, its parts in order, `</s>`; each text segment is tokenized on its own, without BOS.
- An image that follows some text is something the model learns to *create*: it becomes a dream block
  (`<dream_start>` + Q x `<im_patch>` + `<dream_end>`, the diffusion target) followed by an image block of the same
  picture (`<im_start>` + N x `<im_patch>` + `<im_end>`, the picture read back). An image before any text has
  nothing to be created from, so it is only read: an image block alone. Thus `[text, image]` is a creation sample and
  `[image, text]` a comprehension (captioning) sample.
- Labels copy the ids except on image blocks and dream blocks, which are ignored (-100) apart from `<dream_start>`:
  the model learns where images go.
- In conversations, images in user turns are only read and images in assistant turns are created and read back;
  everything outside the assistant turns (system message, user turns, the `ASSISTANT:` prompts) is ignored.
"""

import io
import json
import logging
import os
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import jinja2
import numpy as np
import PIL.Image
import torch

from dreamllm.processing import DreamLLMProcessor
from dreamllm.processing.images import image_to_rgb, open_image
from dreamllm.processing.processing_dreamllm import find_reserved_tokens

logger = logging.getLogger(__name__)

IGNORE_INDEX = -100
IMAGE_TYPES = (str, os.PathLike, bytes, PIL.Image.Image)


class DocumentError(ValueError):
    """
    A record that cannot be trained on. `reason` says why: "empty document", "document longer than the context"
    (nothing learnable fits), "special token in text", "missing image", "unreadable image", "missing field" (a record
    of no known layout) or "malformed record".
    """

    def __init__(self, reason: str, detail: str):
        super().__init__(f"{reason}: {detail}")
        self.reason = reason


@dataclass
class EncodedDocument:
    """
    A document laid out for training.

    Args:
        input_ids (`list[int]`): Token ids from `<s>` to `</s>`, with image and dream blocks expanded.
        labels (`list[int]`): Targets (-100 = ignored), aligned with `input_ids` (the model shifts them).
        images (`list`): The picture of every image block, in order (paths, bytes or `PIL.Image.Image`).
        dream_images (`list`): The picture of every dream block, in order: the diffusion targets.
        image_units (`list[tuple[int, int, bool]]`): Start, end and "has a dream block" of each image's blocks.
        seed (`int`, *optional*): Seed of this document's random draws in the collator (flips); a stream sets it
            so that draws do not depend on batching or resumption.
        truncated (`bool`): Whether the document was cut to the context length.
    """

    input_ids: list[int] = field(default_factory=list)
    labels: list[int] = field(default_factory=list)
    images: list = field(default_factory=list)
    dream_images: list = field(default_factory=list)
    image_units: list[tuple[int, int, bool]] = field(default_factory=list)
    seed: int | None = None
    truncated: bool = False

    def add_text(self, token_ids: Sequence[int], label_ids: Sequence[int]):
        self.input_ids.extend(token_ids)
        self.labels.extend(label_ids)

    def add_image(self, image, image_block: list[int], dream_block: list[int] | None):
        """Appends the dream block (when `dream_block` is given) then the image block of `image`."""
        start = len(self.input_ids)
        if dream_block is not None:
            self.add_text(dream_block, [dream_block[0]] + [IGNORE_INDEX] * (len(dream_block) - 1))
            self.dream_images.append(image)
        self.add_text(image_block, [IGNORE_INDEX] * len(image_block))
        self.images.append(image)
        self.image_units.append((start, len(self.input_ids), dream_block is not None))

    def truncate(self, max_length: int, eos_token_id: int):
        """
        Cuts the document to `max_length` tokens, `</s>` last: text is cut at the token, and an image (its dream
        block and image block together) that no longer fits is dropped with everything after it, as the original
        DreamLLM data pipeline did. The final `</s>` is a target when the token before it is one.
        """
        cut = max_length - 1
        kept = [unit for unit in self.image_units if unit[1] <= cut]
        if len(kept) < len(self.image_units):
            cut = min(cut, self.image_units[len(kept)][0])
        self.input_ids = self.input_ids[:cut] + [eos_token_id]
        self.labels = self.labels[:cut] + [eos_token_id if self.labels[cut - 1] != IGNORE_INDEX else IGNORE_INDEX]
        num_dreams = sum(has_dream for _, _, has_dream in kept)
        self.images, self.dream_images, self.image_units = self.images[: len(kept)], self.dream_images[:num_dreams], kept


class DocumentEncoder:
    """
    Turns document records (see the module docstring) into [`EncodedDocument`]s by DreamLLM's rules.

    Args:
        processor ([`DreamLLMProcessor`]): Gives the tokenizer, the block lengths and the chat template.
        max_length (`int`, *optional*): Context length, in tokens. Longer documents are truncated (see
            [`EncodedDocument.truncate`]; `truncated` is set); one with nothing left to learn after truncation raises a
            [`DocumentError`].
    """

    def __init__(self, processor: DreamLLMProcessor, max_length: int | None = None):
        self.processor = processor
        self.tokenizer = processor.tokenizer
        self.max_length = max_length
        tokenizer = self.tokenizer
        self.image_block_ids = tokenizer(processor.image_block, add_special_tokens=False)["input_ids"]
        self.dream_block_ids = tokenizer(processor.dream_block, add_special_tokens=False)["input_ids"]
        self.reserved_tokens = tokenizer.all_special_tokens
        placeholders = (tokenizer.image_token, tokenizer.dream_token)
        self.placeholder_pattern = re.compile("(" + "|".join(re.escape(token) for token in placeholders) + ")")

    def __call__(self, record: dict) -> EncodedDocument:
        """
        Encodes one record.

        Raises:
            `ValueError`: when the record does not follow the format.
            [`DocumentError`]: when the document cannot be trained on (empty, longer than `max_length`, special
                tokens in its text).
        """
        if not isinstance(record, dict) or len(record.keys() & {"segments", "messages"}) != 1:
            raise ValueError('a document is a JSON object with either "segments" or "messages"')
        if "segments" in record:
            document = self.encode_segments(record["segments"])
        else:
            document = self.encode_messages(record["messages"])
        self.check_length(document)
        return document

    def encode_segments(self, segments: list) -> EncodedDocument:
        """An interleaved document: text segments are learned, images after text are created then read."""
        if not isinstance(segments, list):
            raise ValueError('"segments" must be a list')
        document = self.start_document()
        has_text = False
        for segment in segments:
            kind, value = parse_segment(segment)
            if kind == "text":
                token_ids = self.tokenize(value)
                document.add_text(token_ids, token_ids)
                has_text = has_text or bool(token_ids)
            else:
                document.add_image(value, self.image_block_ids, self.dream_block_ids if has_text else None)
        if not has_text and not document.images:
            raise DocumentError("empty document", "no text and no image")
        self.end_document(document)
        return document

    def encode_messages(self, messages: list) -> EncodedDocument:
        """A conversation: only the assistant turns are learned; user images are read, assistant images created."""
        images, texts = parse_messages(messages)
        for text in texts:
            self.check_reserved_tokens(text)
        if not any(message["role"] == "assistant" for message in messages):
            raise DocumentError("empty document", "the conversation has no assistant turn")
        text = self.render_conversation(messages)
        learned_spans = self.assistant_spans(messages, text)
        document = self.start_document()
        position, image_iter = 0, iter(images)
        for part in self.placeholder_pattern.split(text):
            if part == self.tokenizer.image_token:
                document.add_image(next_image(image_iter), self.image_block_ids, None)
            elif part == self.tokenizer.dream_token:
                document.add_image(next_image(image_iter), self.image_block_ids, self.dream_block_ids)
            elif part:
                document.add_text(*self.tokenize_with_spans(part, position, learned_spans))
            position += len(part)
        if next(image_iter, None) is not None:
            raise ValueError("the rendered conversation has fewer image placeholders than image items")
        return document

    def assistant_spans(self, messages: list, text: str) -> list[tuple[int, int]]:
        """Character spans of `text` (the rendered conversation) written by the assistant, `</s>` included."""
        spans = []
        for index, message in enumerate(messages):
            if message["role"] != "assistant":
                continue
            prompt = self.render_conversation(messages[:index], add_generation_prompt=True)
            turn_end = len(self.render_conversation(messages[: index + 1]))
            if not text.startswith(prompt):
                raise ValueError("the chat template does not render a conversation as the sum of its turns")
            spans.append((len(prompt), turn_end))
        return spans

    def render_conversation(self, messages: list, add_generation_prompt: bool = False) -> str:
        """The conversation as the processor's chat template writes it; a `ValueError` if the template refuses it."""
        try:
            return self.processor.apply_chat_template(
                messages, tokenize=False, add_generation_prompt=add_generation_prompt
            )
        except jinja2.TemplateError as error:
            raise ValueError(f"the chat template rejects the conversation: {error}") from error

    def tokenize(self, text: str) -> list[int]:
        """Ids of a text segment, without BOS (see `check_reserved_tokens`)."""
        self.check_reserved_tokens(text)
        return self.tokenizer(text, add_special_tokens=False)["input_ids"]

    def tokenize_with_spans(self, text: str, offset: int, learned_spans: list[tuple[int, int]]):
        """Ids of `text` (found at `offset` in the conversation) and their labels: learned inside `learned_spans`."""
        encoding = self.tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
        token_ids = encoding["input_ids"]
        labels = [
            token_id if any(start <= offset + char_start < end for start, end in learned_spans) else IGNORE_INDEX
            for token_id, (char_start, _) in zip(token_ids, encoding["offset_mapping"])
        ]
        return token_ids, labels

    def check_reserved_tokens(self, text: str):
        """Raises a [`DocumentError`] when `text` holds special tokens, which would break the document's layout."""
        found = find_reserved_tokens(text, self.reserved_tokens)
        if found:
            raise DocumentError("special token in text", f"{found} (give images as image segments or items)")

    def start_document(self) -> EncodedDocument:
        bos = self.tokenizer.bos_token_id
        return EncodedDocument(input_ids=[bos], labels=[bos])

    def end_document(self, document: EncodedDocument):
        eos = self.tokenizer.eos_token_id
        document.add_text([eos], [eos])

    def check_length(self, document: EncodedDocument):
        """Truncates a document longer than `max_length`; raises a [`DocumentError`] if nothing learnable is left."""
        if self.max_length is None or len(document.input_ids) <= self.max_length:
            return
        length = len(document.input_ids)
        document.truncate(self.max_length, self.tokenizer.eos_token_id)
        document.truncated = True
        if not any(label != IGNORE_INDEX for label in document.labels[1:-1]) and not document.dream_images:
            raise DocumentError("document longer than the context", f"{length} tokens, nothing to learn in the first {self.max_length}")


def parse_segment(segment) -> tuple[str, object]:
    """`("text", str)` or `("image", path or PIL image)` from one segment; a `ValueError` if it is malformed."""
    if isinstance(segment, dict) and len(segment) == 1:
        (kind, value), = segment.items()
        if kind == "text" and isinstance(value, str):
            return kind, value
        if kind == "image" and isinstance(value, IMAGE_TYPES):
            return kind, value
    raise ValueError(f'a segment is {{"text": str}} or {{"image": path}}, got {segment!r:.80}')


def parse_messages(messages) -> tuple[list, list[str]]:
    """Checks the structure of a conversation; returns its images and its texts, in order."""
    if not isinstance(messages, list):
        raise ValueError('"messages" must be a list')
    images, texts = [], []
    for message in messages:
        if not isinstance(message, dict) or not isinstance(message.get("role"), str) or "content" not in message:
            raise ValueError(f'a message is {{"role": str, "content": ...}}, got {message!r:.80}')
        content = message["content"]
        if isinstance(content, str):
            texts.append(content)
            continue
        if not isinstance(content, list):
            raise ValueError("message content must be a string or a list of items")
        for item in content:
            kind, value = parse_content_item(item)
            (images if kind == "image" else texts).append(value)
    return images, texts


def parse_content_item(item) -> tuple[str, object]:
    """`("text", str)` or `("image", path or PIL image)` from a content item; a `ValueError` if it is malformed."""
    if isinstance(item, dict) and item.get("type") == "text" and isinstance(item.get("text"), str):
        return "text", item["text"]
    if isinstance(item, dict) and item.get("type") == "image":
        image = item.get("image")
        if isinstance(image, IMAGE_TYPES):
            return "image", image
    raise ValueError(
        f'a content item is {{"type": "text", "text": str}} or {{"type": "image", "image": path}}, got {item!r:.80}'
    )


def next_image(image_iter):
    image = next(image_iter, None)
    if image is None:
        raise ValueError("the rendered conversation has more image placeholders than image items")
    return image


def map_record_images(record: dict, function) -> dict:
    """A copy of `record` with `function` applied to every image value."""
    if "segments" in record:
        segments = [{"image": function(s["image"])} if "image" in s else dict(s) for s in record["segments"]]
        return {"segments": segments}
    messages = []
    for message in record["messages"]:
        content = message["content"]
        if isinstance(content, list):
            content = [{**item, "image": function(item["image"])} if item.get("type") == "image" else item for item in content]
        messages.append({**message, "content": content})
    return {"messages": messages}


def load_image(image) -> PIL.Image.Image:
    """
    An RGB image from a PIL image, a path or encoded bytes; a [`DocumentError`] ("missing image" or "unreadable
    image", a `ValueError`) naming it when it cannot be read.
    """
    if isinstance(image, PIL.Image.Image):
        return image_to_rgb(image)
    if isinstance(image, (bytes, bytearray)):
        source, name = io.BytesIO(image), f"an image of {len(image)} bytes"
    else:
        source = name = Path(image)
        if not source.is_file():
            raise DocumentError("missing image", str(source))
    try:
        return open_image(source, str(name))
    except OSError as error:
        raise DocumentError("unreadable image", str(error)) from error


def line_offsets(path: Path, block_size: int = 1 << 22) -> np.ndarray:
    """Byte offsets of the non-empty lines of a text file: one pass, 8 bytes per line, nothing parsed."""
    starts, position, previous = [], 0, b"\n"
    with path.open("rb") as file:
        while block := file.read(block_size):
            data = np.frombuffer(block, dtype=np.uint8)
            newlines = np.flatnonzero(data == 10)
            candidates = np.concatenate([[0] if previous == b"\n" else [], newlines + 1]).astype(np.int64)
            candidates = candidates[candidates < len(data)]
            starts.append(candidates[~np.isin(data[candidates], (10, 13))] + position)
            position += len(data)
            previous = block[-1:]
    return np.concatenate(starts) if starts else np.zeros(0, dtype=np.int64)


class JsonlDocumentDataset(torch.utils.data.Dataset):
    """
    The documents of a JSON Lines file (see the module docstring) as a map-style dataset, read lazily: construction
    only indexes where the lines start (one pass over the bytes, 8 bytes per document); item `i` parses line `i`,
    lays it out with the processor and loads its images, as an [`EncodedDocument`] for [`DreamLLMDataCollator`].

    Items that cannot be trained on raise: a `ValueError` naming the line for a malformed one, a [`DocumentError`]
    for an unusable one. `dreamllm train` reads through [`DocumentStream`] instead, which skips and counts them.

    Args:
        path (`str` or `os.PathLike`): The JSON Lines file; image paths in it are relative to its folder.
        processor ([`DreamLLMProcessor`]): Tokenizer and block lengths, to lay the documents out.
        max_length (`int`, *optional*): Context length; longer documents are truncated.

    Raises:
        `FileNotFoundError`: when `path` does not exist. `ValueError`: when it holds no line.
    """

    def __init__(self, path: str | os.PathLike, processor: DreamLLMProcessor, max_length: int | None = None):
        self.path = Path(path)
        if not self.path.is_file():
            raise FileNotFoundError(f"no data file at {self.path}")
        self.offsets = line_offsets(self.path)
        if not len(self.offsets):
            raise ValueError(f"{self.path} holds no document")
        self.encoder = DocumentEncoder(processor, max_length=max_length)

    def __len__(self) -> int:
        return len(self.offsets)

    def record(self, index: int) -> dict:
        """The record of line `index` as written, parsed; a `ValueError` naming the line if it is not JSON."""
        with self.path.open("rb") as file:
            file.seek(int(self.offsets[index]))
            line = file.readline()
        try:
            return json.loads(line)
        except ValueError as error:
            raise ValueError(f"{self.path}:{self.line_number(index)}: not a DreamLLM document: {error}") from error

    def line_number(self, index: int) -> int:
        with self.path.open("rb") as file:
            return file.read(int(self.offsets[index])).count(b"\n") + 1

    def __getitem__(self, index: int) -> EncodedDocument:
        record = self.record(index)
        try:
            document = self.encoder(map_record_images(record, self.resolve_image_path))
            return load_document_images(document)
        except DocumentError:
            raise
        except ValueError as error:
            raise ValueError(f"{self.path}:{self.line_number(index)}: not a DreamLLM document: {error}") from error

    def resolve_image_path(self, image) -> Path:
        if not isinstance(image, (str, os.PathLike)):
            raise ValueError(f"images in a JSON Lines file are paths, got {image!r:.80}")
        return self.path.parent / image


def load_document_images(document: EncodedDocument) -> EncodedDocument:
    """Loads every image of `document` (a [`DocumentError`] names one that is missing or unreadable)."""
    loaded = {}
    for image in document.images + document.dream_images:
        if id(image) not in loaded:
            loaded[id(image)] = load_image(image)
    document.images = [loaded[id(image)] for image in document.images]
    document.dream_images = [loaded[id(image)] for image in document.dream_images]
    return document


class DiffusionImageTransform:
    """
    The diffusion target of an image, as DreamLLM's Stable Diffusion head prepares it: shorter side resized to
    `resolution` (bilinear), centre crop to `resolution` x `resolution`, optional horizontal flip, values in [-1, 1].
    Returns a `(3, resolution, resolution)` float tensor.
    """

    def __init__(self, resolution: int):
        self.resolution = resolution

    def __call__(self, image: PIL.Image.Image, flip: bool = False) -> torch.Tensor:
        image = self.center_crop(self.resize(image.convert("RGB")))
        if flip:
            image = image.transpose(PIL.Image.Transpose.FLIP_LEFT_RIGHT)
        pixels = torch.from_numpy(np.array(image)).permute(2, 0, 1)
        return pixels.float().div(255.0).sub(0.5).div(0.5)

    def resize(self, image: PIL.Image.Image) -> PIL.Image.Image:
        width, height = image.size
        short, long = sorted((width, height))
        long = int(self.resolution * long / short)
        size = (self.resolution, long) if width <= height else (long, self.resolution)
        return image.resize(size, PIL.Image.Resampling.BILINEAR)

    def center_crop(self, image: PIL.Image.Image) -> PIL.Image.Image:
        left = int(round((image.width - self.resolution) / 2.0))
        top = int(round((image.height - self.resolution) / 2.0))
        return image.crop((left, top, left + self.resolution, top + self.resolution))


class DreamLLMDataCollator:
    """
    Builds DreamLLM training batches from document records (segments or messages, images as paths, bytes or PIL
    images) or from [`EncodedDocument`]s.

    Each record is laid out by [`DocumentEncoder`]; rows are padded on the right (`[PAD]`, attention 0, label -100).
    The batch holds `input_ids`, `attention_mask`, `labels`, and when present `pixel_values` (one per image block,
    row-major, from the processor's image processor) and `diffusion_pixel_values` (one per dream block, row-major,
    from [`DiffusionImageTransform`]).

    Args:
        processor ([`DreamLLMProcessor`]): Tokenizer, image processor and block lengths.
        diffusion_resolution (`int`, *optional*): Side of the diffusion targets; needed when documents hold images
            to create. [`diffusion_resolution`] gives it for a UNet and VAE.
        random_flip (`bool`, *optional*, defaults to `True`): Flip each diffusion target horizontally with
            probability 1/2, as DreamLLM's training did.
        seed (`int`, *optional*, defaults to 0): Seed of the flips.
        max_length (`int`, *optional*): Longest document accepted, in tokens.
    """

    def __init__(
        self,
        processor: DreamLLMProcessor,
        diffusion_resolution: int | None = None,
        random_flip: bool = True,
        seed: int = 0,
        max_length: int | None = None,
    ):
        self.processor = processor
        self.encoder = DocumentEncoder(processor, max_length=max_length)
        self.diffusion_transform = DiffusionImageTransform(diffusion_resolution) if diffusion_resolution else None
        self.random_flip = random_flip
        self.generator = torch.Generator().manual_seed(seed)

    def __call__(self, documents: list[dict | EncodedDocument]) -> dict[str, torch.Tensor]:
        """A batch of `documents`: records, laid out here, or [`EncodedDocument`]s, laid out already."""
        documents = [self.encoder(item) if isinstance(item, dict) else item for item in documents]
        batch = self.pad([document.input_ids for document in documents], [document.labels for document in documents])
        images = [load_image(image) for document in documents for image in document.images]
        if images:
            batch["pixel_values"] = self.processor.image_processor(images, return_tensors="pt")["pixel_values"]
        dream_images = [load_image(image) for document in documents for image in document.dream_images]
        if dream_images:
            batch["diffusion_pixel_values"] = self.diffusion_targets(dream_images, self.flips(documents))
        return batch

    def flips(self, documents: list[EncodedDocument]) -> list[bool]:
        """Whether to flip each diffusion target: drawn per document from its seed when it has one."""
        if not self.random_flip:
            return [False] * sum(len(document.dream_images) for document in documents)
        flips = []
        for document in documents:
            generator = self.generator if document.seed is None else torch.Generator().manual_seed(document.seed)
            flips += (torch.rand(len(document.dream_images), generator=generator) < 0.5).tolist()
        return flips

    def pad(self, input_ids: list[list[int]], labels: list[list[int]]) -> dict[str, torch.Tensor]:
        length = max(len(ids) for ids in input_ids)
        pad_id = self.processor.tokenizer.pad_token_id
        batch = {
            "input_ids": torch.full((len(input_ids), length), pad_id, dtype=torch.long),
            "attention_mask": torch.zeros((len(input_ids), length), dtype=torch.long),
            "labels": torch.full((len(input_ids), length), IGNORE_INDEX, dtype=torch.long),
        }
        for row, (ids, row_labels) in enumerate(zip(input_ids, labels)):
            batch["input_ids"][row, : len(ids)] = torch.tensor(ids)
            batch["attention_mask"][row, : len(ids)] = 1
            batch["labels"][row, : len(ids)] = torch.tensor(row_labels)
        return batch

    def diffusion_targets(self, images: list[PIL.Image.Image], flips: list[bool]) -> torch.Tensor:
        if self.diffusion_transform is None:
            raise ValueError("the documents hold images to create: pass diffusion_resolution to the collator")
        return torch.stack([self.diffusion_transform(image, flip) for image, flip in zip(images, flips)])


def diffusion_resolution(unet, vae) -> int:
    """Image side a UNet and VAE work at: the UNet's latent size times the VAE's downsampling factor."""
    return unet.config.sample_size * 2 ** (len(vae.config.block_out_channels) - 1)


__all__ = [
    "DiffusionImageTransform",
    "DocumentEncoder",
    "DocumentError",
    "DreamLLMDataCollator",
    "EncodedDocument",
    "JsonlDocumentDataset",
    "diffusion_resolution",
    "load_image",
]
