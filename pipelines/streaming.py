"""Events of a document being written, as [`DreamLLMPipeline.stream`] yields them, and the text decoding behind them.

A row's events come in reading order: [`TextDelta`]s of its first text segment, [`ImageStarted`], optional
[`ImagePreview`]s, [`ImageDone`], the deltas of the next segment, and so on; rows of a batch interleave, each event
tagged with its row. [`DocumentDone`] comes last, once, with the output the blocking call returns.
"""

from dataclasses import dataclass
from typing import Any

import PIL.Image
import torch
from transformers.generation.streamers import BaseStreamer


@dataclass(frozen=True)
class TextDelta:
    """New text of row `row`: the deltas between two images concatenate to that text segment of the document."""

    row: int
    text: str


@dataclass(frozen=True)
class ImageStarted:
    """Row `row` began its image number `index` (counted from 0 within the row)."""

    row: int
    index: int


@dataclass(frozen=True)
class ImagePreview:
    """A rough look at an image being drawn, after denoising step `step` (counted from 1)."""

    row: int
    index: int
    step: int
    image: PIL.Image.Image


@dataclass(frozen=True)
class ImageDone:
    """The finished image number `index` of row `row`, in the call's `output_type`."""

    row: int
    index: int
    image: Any


@dataclass(frozen=True)
class DocumentDone:
    """Every document is written; `output` is what the blocking call returns for the same arguments and seed."""

    output: Any


StreamEvent = TextDelta | ImageStarted | ImagePreview | ImageDone | DocumentDone


class SegmentDecoder:
    """
    Decodes one row's current text segment as its tokens arrive, giving only the text that can no longer change.

    The document holds each segment as `tokenizer.decode(ids, skip_special_tokens=True).strip()`; the decoder
    decodes the whole segment again after each token and holds back what may still change: an incomplete
    multi-byte character (`"\\ufffd"` at the end) and trailing whitespace (stripped unless more text follows).
    """

    def __init__(self, tokenizer):
        self.tokenizer = tokenizer
        self.ids: list[int] = []
        self.emitted = ""

    def add(self, token_id: int) -> str:
        """Appends a token; returns the text that became certain (maybe empty)."""
        self.ids.append(token_id)
        text = self.decode().rstrip("\ufffd").rstrip()
        return self.take(text)

    def finish(self) -> str:
        """Ends the segment (an image or the end of the document follows); returns the rest of its text."""
        rest = self.take(self.decode())
        self.ids, self.emitted = [], ""
        return rest

    def decode(self) -> str:
        return self.tokenizer.decode(self.ids, skip_special_tokens=True).strip()

    def take(self, text: str) -> str:
        if len(text) <= len(self.emitted) or not text.startswith(self.emitted):
            return ""
        delta = text[len(self.emitted) :]
        self.emitted = text
        return delta


class StreamerFeed:
    """
    Feeds a transformers `BaseStreamer` the way `model.generate` does: the prompt ids first, then every sampled token;
    a drawn image goes in as the image placeholder token. `end()` is the caller's to call.
    """

    def __init__(self, streamer: BaseStreamer, image_token_id: int, dream_start_token_id: int):
        self.streamer = streamer
        self.image_token_id = image_token_id
        self.dream_start_token_id = dream_start_token_id

    def prompt(self, prompt_ids: torch.LongTensor):
        self.streamer.put(prompt_ids.cpu())

    def token(self, token_id: int):
        if token_id != self.dream_start_token_id:
            self.streamer.put(torch.tensor([token_id]))

    def image(self):
        self.streamer.put(torch.tensor([self.image_token_id]))


__all__ = [
    "DocumentDone",
    "ImageDone",
    "ImagePreview",
    "ImageStarted",
    "SegmentDecoder",
    "StreamEvent",
    "StreamerFeed",
    "TextDelta",
]
