"""Processor of DreamLLM: the Llama tokenizer plus the CLIP image processor, with DreamLLM's image and dream blocks."""

import os
from collections.abc import Iterable, Sequence
from pathlib import Path

from tokenizers import Tokenizer
from transformers import ProcessorMixin
from transformers.feature_extraction_utils import BatchFeature
from transformers.image_utils import ImageInput
from transformers.processing_utils import ProcessingKwargs, Unpack
from transformers.tokenization_utils_base import PreTokenizedInput, TextInput

from dreamllm.hub_files import NoSourceCopy

from .images import prepare_images
from .tokenization_dreamllm import _read_json

# The files of a saved processor that are JSON, beside `tokenizer.json` (which must also be a `tokenizers` file).
PROCESSOR_JSON_FILES = (
    "tokenizer_config.json",
    "special_tokens_map.json",
    "added_tokens.json",
    "processor_config.json",
    "preprocessor_config.json",
    "chat_template.json",
)

# Vicuna v1.1, the conversation format of DreamLLM's instruction tuning: "<system> USER: <msg> ASSISTANT: <msg></s>".
# Images a user shows are `<image>` placeholders (the processor expands them); images the assistant draws are
# `<dream>` placeholders.
VICUNA_V1_1_SYSTEM_MESSAGE = (
    "A chat between a curious user and an artificial intelligence assistant. "
    "The assistant gives helpful, detailed, and polite answers to the user's questions."
)
VICUNA_V1_1_CHAT_TEMPLATE = (
    "{%- if messages[0]['role'] == 'system' -%}"
    "{%- if messages[0]['content'] is string -%}{%- set system_message = messages[0]['content'] -%}"
    "{%- else -%}{%- set system_message = messages[0]['content'] | map(attribute='text') | join('') -%}{%- endif -%}"
    "{%- set messages = messages[1:] -%}"
    "{%- else -%}{%- set system_message = '" + VICUNA_V1_1_SYSTEM_MESSAGE.replace("'", "\\'") + "' -%}{%- endif -%}"
    "{{- system_message + ' ' -}}"
    "{%- for message in messages -%}"
    "{%- if message['role'] == 'user' -%}{{- 'USER: ' -}}"
    "{%- elif message['role'] == 'assistant' -%}{{- 'ASSISTANT: ' -}}"
    "{%- else -%}{{- raise_exception('Vicuna v1.1 conversations only have user and assistant turns after the system "
    "message, got role ' + message['role']) -}}{%- endif -%}"
    "{%- if message['content'] is string -%}{{- message['content'] -}}"
    "{%- else -%}{%- for item in message['content'] -%}"
    "{%- if item['type'] == 'image' -%}{{- '<image>\\n' if message['role'] == 'user' else '<dream>' -}}"
    "{%- elif item['type'] == 'text' -%}{{- item['text'] -}}{%- endif -%}"
    "{%- endfor -%}{%- endif -%}"
    "{{- ' ' if message['role'] == 'user' else '</s>' -}}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{- 'ASSISTANT:' -}}{%- endif -%}"
)


def find_reserved_tokens(text: str, reserved_tokens: Iterable[str]) -> list[str]:
    """The tokens of `reserved_tokens` that `text` holds literally, in the order of `reserved_tokens`."""
    return [token for token in reserved_tokens if token in text]


def check_processor_files(folder: str | os.PathLike) -> None:
    """
    Reads the processor files of a local `folder` before transformers does: each JSON file present parses, and
    `tokenizer.json` is a `tokenizers` file.

    Raises:
        `ValueError`: naming the damaged file and what is wrong with it.
    """
    folder = Path(folder)
    for name in PROCESSOR_JSON_FILES:
        if (folder / name).is_file():
            _read_json(folder / name)
    tokenizer_file = folder / "tokenizer.json"
    if tokenizer_file.is_file():
        _read_json(tokenizer_file)
        try:
            Tokenizer.from_file(str(tokenizer_file))
        except Exception as error:  # tokenizers raises a bare `Exception` for a file it cannot read
            raise ValueError(f"{tokenizer_file} is not a tokenizers file: {error}") from error


class DreamLLMProcessor(NoSourceCopy, ProcessorMixin):
    r"""
    Prepares interleaved text and images for [`DreamLLMForCausalLM`] and turns generated ids back into documents.

    In the text, `<image>` marks an input image: it becomes `<im_start>` + `num_image_tokens` x `<im_patch>` +
    `<im_end>`, and the image goes through the CLIP image processor. `<dream>` marks an image for the model to draw:
    it becomes `<dream_start>` + `num_dream_queries` x `<im_patch>` + `<dream_end>`. Only these expansions write
    block tokens: text that holds `<im_patch>`, `<im_start>`, `<im_end>`, `<dream_start>` or `<dream_end>` itself is
    refused with a `ValueError` (see [`~DreamLLMProcessor.check_text`]).

    Args:
        image_processor ([`CLIPImageProcessor`]):
            The vision tower's image processor.
        tokenizer ([`LlamaTokenizer`]):
            The Llama tokenizer with DreamLLM's special tokens as named attributes (`tokenizer.image_token`, ...).
        chat_template (`str`, *optional*):
            Jinja template for `apply_chat_template`; defaults to Vicuna v1.1.
        num_image_tokens (`int`, *optional*, defaults to 256):
            Patch positions of one input image (vision patches without CLS).
        num_dream_queries (`int`, *optional*, defaults to 64):
            Patch positions of one image to draw.
    """

    text_kwargs = {"padding": True, "padding_side": "left"}

    def __init__(
        self,
        image_processor=None,
        tokenizer=None,
        chat_template: str | None = None,
        num_image_tokens: int = 256,
        num_dream_queries: int = 64,
        **kwargs,
    ):
        self.num_image_tokens = num_image_tokens
        self.num_dream_queries = num_dream_queries
        self.image_token = tokenizer.image_token
        self.image_token_id = tokenizer.image_token_id
        super().__init__(image_processor, tokenizer, chat_template=chat_template or VICUNA_V1_1_CHAT_TEMPLATE)

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path: str | os.PathLike, **kwargs) -> "DreamLLMProcessor":
        """
        As [`~transformers.ProcessorMixin.from_pretrained`]; the files of a local folder are checked first.

        Raises:
            `ValueError`: naming a damaged file of the folder (see [`check_processor_files`]).
        """
        folder = Path(pretrained_model_name_or_path) / kwargs.get("subfolder", "")
        if folder.is_dir():
            check_processor_files(folder)
        return super().from_pretrained(pretrained_model_name_or_path, **kwargs)

    def __call__(
        self,
        images: ImageInput | None = None,
        text: TextInput | PreTokenizedInput | list[TextInput] | list[PreTokenizedInput] | None = None,
        **kwargs: Unpack[ProcessingKwargs],
    ) -> BatchFeature:
        """
        Tokenizes `text` with `<image>` and `<dream>` expanded, and prepares `images` (one per `<image>`, in order).
        16-bit greyscale images are scaled to 8 bit and 2-D greyscale arrays get three channels (see
        [`~processing.images.prepare_images`]).

        Returns:
            [`BatchFeature`] with `input_ids`, `attention_mask` and, when images are given, `pixel_values`.

        Raises:
            `TypeError`: when `text` is not a string or a list of strings, or an image is `None`.
            `ValueError`: when the number of images differs from the number of `<image>` placeholders, `text` is an
                empty list, or the text holds a block token (see [`~DreamLLMProcessor.check_text`]).
        """
        if text is not None:
            text = self.text_samples(text)
            for index, sample in enumerate(text):
                self.check_text(sample, f"text[{index}]")
            text = [self.expand_dream_placeholders(sample) for sample in text]
        if images is not None:
            images = prepare_images(images)
        return super().__call__(images=images, text=text, **kwargs)

    @staticmethod
    def text_samples(text) -> list[str]:
        """`text` (a string or a list of strings) as a list of strings; a `TypeError` naming a wrong entry."""
        samples = [text] if isinstance(text, str) else text
        if not isinstance(samples, (list, tuple)):
            raise TypeError(f"text must be a string or a list of strings, got {type(text).__name__}")
        if not samples:
            raise ValueError("text is an empty list; give a string or a list of strings")
        for index, sample in enumerate(samples):
            if not isinstance(sample, str):
                raise TypeError(f"text[{index}] must be a string, got {type(sample).__name__}")
        return list(samples)

    @property
    def block_tokens(self) -> tuple[str, ...]:
        """The tokens that only the processor writes, as parts of image and dream blocks."""
        tokenizer = self.tokenizer
        return (
            tokenizer.image_patch_token,
            tokenizer.image_start_token,
            tokenizer.image_end_token,
            tokenizer.dream_start_token,
            tokenizer.dream_end_token,
        )

    def check_text(self, text: str, argument: str = "text") -> None:
        """
        Refuses `text` (called `argument` in the error) when it holds a block token: typed by a user, it would reach
        the model as a reserved id and break the layout of image and dream blocks.

        Raises:
            `ValueError`: naming the block tokens found.
        """
        found = find_reserved_tokens(text, self.block_tokens)
        if found:
            raise ValueError(
                f"{argument} holds the reserved token(s) {', '.join(found)}, which only the processor writes; "
                f"mark an input image with {self.tokenizer.image_token} and an image to draw with "
                f"{self.tokenizer.dream_token}"
            )

    @property
    def image_block(self) -> str:
        """The text an input image expands to."""
        tokenizer = self.tokenizer
        patches = tokenizer.image_patch_token * self.num_image_tokens
        return tokenizer.image_start_token + patches + tokenizer.image_end_token

    @property
    def dream_block(self) -> str:
        """The text an image to draw expands to."""
        tokenizer = self.tokenizer
        patches = tokenizer.image_patch_token * self.num_dream_queries
        return tokenizer.dream_start_token + patches + tokenizer.dream_end_token

    def replace_image_token(self, image_inputs: dict, image_idx: int, **kwargs) -> str:
        return self.image_block

    def expand_dream_placeholders(self, text: str) -> str:
        """Replaces every `<dream>` of `text` by a dream block."""
        return text.replace(self.tokenizer.dream_token, self.dream_block)

    def count_document_images(self, token_ids: Sequence[int]) -> int:
        """Number of images a generated sequence holds (see [`~DreamLLMProcessor.decode_document`])."""
        return sum(1 for segment in self._split_document(token_ids) if segment[0] == "image")

    def decode_document(
        self, token_ids: Sequence[int], images: Sequence | None = None, skip_special_tokens: bool = True
    ) -> list:
        """
        Turns generated ids into a document: a list of text segments (`str`) and images, in reading order.

        A dream block directly followed by an image block is one image (the drawn picture and its reading); a lone
        dream block or a lone image block is one image too. Each image slot takes the next entry of `images`.

        Args:
            token_ids (`Sequence[int]`): One generated sequence.
            images (`Sequence`, *optional*): The pictures of the image slots, in order; none means no slots expected.
            skip_special_tokens (`bool`, *optional*, defaults to `True`): Passed to the tokenizer's `decode`.

        Raises:
            `ValueError`: when the number of images differs from the number of image slots.
        """
        segments = self._split_document([int(token_id) for token_id in token_ids])
        images = list(images or [])
        num_slots = sum(1 for kind, _ in segments if kind == "image")
        if num_slots != len(images):
            raise ValueError(f"The ids hold {num_slots} image slot(s) but {len(images)} image(s) were given")
        document, image_iter = [], iter(images)
        for kind, ids in segments:
            if kind == "image":
                document.append(next(image_iter))
                continue
            text = self.tokenizer.decode(ids, skip_special_tokens=skip_special_tokens).strip()
            if text:
                document.append(text)
        return document

    def _split_document(self, token_ids: list[int]) -> list[tuple[str, list[int]]]:
        """Splits ids into ("text", ids) and ("image", ids) runs; see `decode_document` for what one image is."""
        tokenizer = self.tokenizer
        closers = {tokenizer.image_start_token_id: tokenizer.image_end_token_id,
                   tokenizer.dream_start_token_id: tokenizer.dream_end_token_id}
        segments, text_ids, position = [], [], 0
        while position < len(token_ids):
            opener = token_ids[position]
            if opener not in closers:
                text_ids.append(opener)
                position += 1
                continue
            block_end = self._block_end(token_ids, position, closers[opener])
            if opener == tokenizer.dream_start_token_id and token_ids[block_end:block_end + 1] == [tokenizer.image_start_token_id]:
                block_end = self._block_end(token_ids, block_end, tokenizer.image_end_token_id)
            if text_ids:
                segments.append(("text", text_ids))
                text_ids = []
            segments.append(("image", token_ids[position:block_end]))
            position = block_end
        if text_ids:
            segments.append(("text", text_ids))
        return segments

    def _block_end(self, token_ids: list[int], opener_position: int, closer_id: int) -> int:
        """Index just past the block opened at `opener_position`: its patch run and, if present, its closer."""
        position = opener_position + 1
        while position < len(token_ids) and token_ids[position] == self.tokenizer.image_patch_token_id:
            position += 1
        if position < len(token_ids) and token_ids[position] == closer_id:
            position += 1
        return position


__all__ = [
    "DreamLLMProcessor",
    "VICUNA_V1_1_CHAT_TEMPLATE",
    "VICUNA_V1_1_SYSTEM_MESSAGE",
    "check_processor_files",
    "find_reserved_tokens",
]
