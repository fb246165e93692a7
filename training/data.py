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

import json
import logging
import os
import re
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import jinja2
import numpy as np
import PIL.Image
import torch

from dreamllm.processing import DreamLLMProcessor

logger = logging.getLogger(__name__)

IGNORE_INDEX = -100


class DocumentError(ValueError):
    """
    A well-formed document that cannot be trained on. `reason` says why: "empty document", "document longer than
    the context", "special token in text", "missing image" or "unreadable image".
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
        images (`list`): The picture of every image block, in order (paths or `PIL.Image.Image`).
        dream_images (`list`): The picture of every dream block, in order: the diffusion targets.
    """

    input_ids: list[int] = field(default_factory=list)
    labels: list[int] = field(default_factory=list)
    images: list = field(default_factory=list)
    dream_images: list = field(default_factory=list)

    def add_text(self, token_ids: Sequence[int], label_ids: Sequence[int]):
        self.input_ids.extend(token_ids)
        self.labels.extend(label_ids)

    def add_image(self, image, image_block: list[int], dream_block: list[int] | None):
        """Appends the dream block (when `dream_block` is given) then the image block of `image`."""
        if dream_block is not None:
            self.add_text(dream_block, [dream_block[0]] + [IGNORE_INDEX] * (len(dream_block) - 1))
            self.dream_images.append(image)
        self.add_text(image_block, [IGNORE_INDEX] * len(image_block))
        self.images.append(image)


class DocumentEncoder:
    """
    Turns document records (see the module docstring) into [`EncodedDocument`]s by DreamLLM's rules.

    Args:
        processor ([`DreamLLMProcessor`]): Gives the tokenizer, the block lengths and the chat template.
        max_length (`int`, *optional*): Longest document accepted, in tokens; longer ones raise a [`DocumentError`].
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
        found = [token for token in self.reserved_tokens if token in text]
        if found:
            raise DocumentError("special token in text", f"{found} (give images as image segments or items)")

    def start_document(self) -> EncodedDocument:
        bos = self.tokenizer.bos_token_id
        return EncodedDocument(input_ids=[bos], labels=[bos])

    def end_document(self, document: EncodedDocument):
        eos = self.tokenizer.eos_token_id
        document.add_text([eos], [eos])

    def check_length(self, document: EncodedDocument):
        if self.max_length is not None and len(document.input_ids) > self.max_length:
            raise DocumentError(
                "document longer than the context", f"{len(document.input_ids)} tokens > {self.max_length}"
            )


def parse_segment(segment) -> tuple[str, object]:
    """`("text", str)` or `("image", path or PIL image)` from one segment; a `ValueError` if it is malformed."""
    if isinstance(segment, dict) and len(segment) == 1:
        (kind, value), = segment.items()
        if kind == "text" and isinstance(value, str):
            return kind, value
        if kind == "image" and isinstance(value, (str, os.PathLike, PIL.Image.Image)):
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
        if isinstance(image, (str, os.PathLike, PIL.Image.Image)):
            return "image", image
    raise ValueError(
        f'a content item is {{"type": "text", "text": str}} or {{"type": "image", "image": path}}, got {item!r:.80}'
    )


def next_image(image_iter):
    image = next(image_iter, None)
    if image is None:
        raise ValueError("the rendered conversation has more image placeholders than image items")
    return image


def record_images(record: dict) -> list:
    """Every image value of a record, in order (used to check and resolve image files)."""
    if "segments" in record:
        return [value for kind, value in map(parse_segment, record["segments"]) if kind == "image"]
    return parse_messages(record["messages"])[0]


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
    """An RGB image from a path or a PIL image; a `ValueError` naming the file when it cannot be read."""
    if isinstance(image, PIL.Image.Image):
        return image.convert("RGB")
    try:
        with PIL.Image.open(image) as opened:
            return opened.convert("RGB")
    except (OSError, ValueError, PIL.Image.DecompressionBombError) as error:
        raise ValueError(f"cannot read image {image}: {error}") from error


def check_image_file(path: Path):
    """Raises a [`DocumentError`] when `path` is missing or is not a readable image."""
    if not path.is_file():
        raise DocumentError("missing image", str(path))
    try:
        with PIL.Image.open(path) as image:
            image.verify()
    except (OSError, ValueError, SyntaxError, PIL.Image.DecompressionBombError) as error:
        raise DocumentError("unreadable image", f"{path} ({error})") from error


class JsonlDocumentDataset(torch.utils.data.Dataset):
    """
    The documents of a JSON Lines file (see the module docstring), checked up front.

    Lines that are not documents (invalid JSON, unknown structure) raise a `ValueError` naming the line. Documents
    that cannot be trained on (empty, longer than `max_length`, with special tokens in their text, with a missing or
    unreadable image) are skipped and counted by reason in `skipped`; a warning sums them up. Items are the records with image
    paths made absolute and the images loaded, ready for [`DreamLLMDataCollator`].

    Args:
        path (`str` or `os.PathLike`): The JSON Lines file.
        processor ([`DreamLLMProcessor`]): Tokenizer and block lengths, to lay the documents out.
        max_length (`int`, *optional*): Longest document kept, in tokens.

    Raises:
        `FileNotFoundError`: when `path` does not exist.
        `ValueError`: on a malformed line, or when no document is usable.
    """

    def __init__(self, path: str | os.PathLike, processor: DreamLLMProcessor, max_length: int | None = None):
        self.path = Path(path)
        if not self.path.is_file():
            raise FileNotFoundError(f"no data file at {self.path}")
        encoder = DocumentEncoder(processor, max_length=max_length)
        self.records: list[dict] = []
        self.skipped: Counter = Counter()
        with self.path.open(encoding="utf-8") as lines:
            for line_number, line in enumerate(lines, start=1):
                if line.strip():
                    self.add_line(line, line_number, encoder)
        self.report_skipped()

    def add_line(self, line: str, line_number: int, encoder: DocumentEncoder):
        try:
            record = json.loads(line)
            encoder(record)
            record = map_record_images(record, self.resolve_image_path)
            for image in record_images(record):
                check_image_file(image)
        except DocumentError as error:
            self.skipped[error.reason] += 1
            logger.debug("%s:%d skipped: %s", self.path, line_number, error)
            return
        except ValueError as error:
            raise ValueError(f"{self.path}:{line_number}: not a DreamLLM document: {error}") from error
        self.records.append(record)

    def resolve_image_path(self, image) -> Path:
        if not isinstance(image, (str, os.PathLike)):
            raise ValueError(f"images in a JSON Lines file are paths, got {image!r:.80}")
        return self.path.parent / image

    def report_skipped(self):
        if self.skipped:
            counts = ", ".join(f"{count} {reason}" for reason, count in sorted(self.skipped.items()))
            logger.warning("%s: skipped %d document(s): %s", self.path, sum(self.skipped.values()), counts)
        if not self.records:
            raise ValueError(f"{self.path} holds no usable document (skipped: {dict(self.skipped) or 'none'})")

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, index: int) -> dict:
        return map_record_images(self.records[index], load_image)


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
    Builds DreamLLM training batches from document records (segments or messages, images as paths or PIL images).

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

    def __call__(self, records: list[dict]) -> dict[str, torch.Tensor]:
        documents = [self.encoder(record) for record in records]
        batch = self.pad([document.input_ids for document in documents], [document.labels for document in documents])
        images = [load_image(image) for document in documents for image in document.images]
        if images:
            batch["pixel_values"] = self.processor.image_processor(images, return_tensors="pt")["pixel_values"]
        dream_images = [load_image(image) for document in documents for image in document.dream_images]
        if dream_images:
            batch["diffusion_pixel_values"] = self.diffusion_targets(dream_images)
        return batch

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

    def diffusion_targets(self, images: list[PIL.Image.Image]) -> torch.Tensor:
        if self.diffusion_transform is None:
            raise ValueError("the documents hold images to create: pass diffusion_resolution to the collator")
        flips = torch.rand(len(images), generator=self.generator) < 0.5 if self.random_flip else [False] * len(images)
        return torch.stack([self.diffusion_transform(image, bool(flip)) for image, flip in zip(images, flips)])


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
]
