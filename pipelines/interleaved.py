"""Bookkeeping of interleaved generation: a batch of documents written on one shared key/value cache.

Every row of the batch keeps the ids of its whole sequence (prompt, sampled tokens, inserted blocks). The ids at the
end of a row that the language model has not seen yet are its *pending* ids. Each forward pass feeds every row that
has pending ids in one chunk: the pending ids are right-aligned in the chunk and the slots to their left are *holes*
(padding with attention mask 0), so rows may feed different numbers of ids in the same pass (one sampled token, a
dream block, an image block), the last position of the chunk is every fed row's newest token, and the holes never
take part in attention. Position ids count real tokens only (cumulative sum of the attention mask), so a row of a batch
sees exactly the positions it would see alone.

A row that starts an image may wait before its dream block is fed (`DocumentRow.waiting`), so that the rows starting
images within a few passes of each other feed their dream blocks in one pass and have their images drawn in one
batched denoising loop ([`DocumentBatch.release_waiting_rows`]).

Ids are fed only when something needs them: a row's unfinished dream block (its hidden states give the image
condition), and the pending ids of rows that go on writing. The last sampled token of a finished row and an image
block drawn at the very end of a row are written to the document but never fed.
"""

from dataclasses import dataclass, field

import torch
from transformers import GenerationConfig, LogitsProcessorList, StoppingCriteriaList
from torch.nn.utils.rnn import pad_sequence


@dataclass
class DocumentRow:
    """One document being written.

    Args:
        ids: Prompt ids (no padding) followed by everything written so far (a 1-D tensor on the CPU).
        prompt_length: How many of `ids` are the prompt.
        num_fed: How many of `ids` the language model has processed (they are in the cache).
        pending_pixel_values: Pixel values (`(num_images, channels, height, width)` each) of the image blocks among the
            pending ids, in order.
        images: The images drawn so far, in order.
        num_new_tokens: Tokens sampled so far (inserted blocks do not count).
        drawing: Whether the row's pending ids end with a dream block whose image has not been drawn.
        waiting: While the row's dream block waits for other rows to start their images, the passes it has waited so
            far; `None` when it does not wait.
        finished: Whether the row writes no more tokens (EOS, stopping criterion, token budget or full context).
    """

    ids: torch.LongTensor
    prompt_length: int
    num_fed: int = 0
    pending_pixel_values: list[torch.Tensor] = field(default_factory=list)
    images: list = field(default_factory=list)
    num_new_tokens: int = 0
    drawing: bool = False
    waiting: int | None = None
    finished: bool = False

    def extend(self, ids: list[int]):
        """Writes `ids` at the end of the row."""
        self.ids = torch.cat([self.ids, torch.tensor(ids, dtype=torch.long)])

    @property
    def pending_ids(self) -> torch.LongTensor:
        return self.ids[self.num_fed :]

    @property
    def needs_forward(self) -> bool:
        """
        A row is fed when it has pending ids and either goes on writing or needs its dream condition, unless its dream
        block waits for other rows.
        """
        return len(self.ids) > self.num_fed and (self.drawing or not self.finished) and self.waiting is None

    @property
    def new_ids(self) -> list[int]:
        return self.ids[self.prompt_length :].tolist()


@dataclass
class ForwardChunk:
    """
    The inputs of one forward pass over the rows that need one (see the module docstring): every row of the batch,
    or with `rows_only` just `fed_rows` (in that order), whose cache then grows while the others get holes.
    """

    input_ids: torch.LongTensor
    attention_mask: torch.LongTensor
    position_ids: torch.LongTensor
    pixel_values: torch.FloatTensor | None
    fed_rows: list[int]
    rows_only: bool = False


class DocumentBatch:
    """
    The rows of an interleaved generation and the attention mask of their shared cache.

    Args:
        input_ids (`torch.LongTensor` of shape `(batch_size, prompt_length)`): The prompts, padded on either side.
        attention_mask (`torch.LongTensor`): 1 for prompt tokens, 0 for padding.
        pixel_values (`torch.FloatTensor`, *optional*): The images of the prompts' image blocks, in row-major order.
        images_per_row (`list[int]`): How many of `pixel_values` belong to each row.
        pad_token_id (`int`): The id written into holes.
    """

    def __init__(
        self,
        input_ids: torch.LongTensor,
        attention_mask: torch.LongTensor,
        pixel_values: torch.FloatTensor | None,
        images_per_row: list[int],
        pad_token_id: int,
    ):
        self.pad_token_id = pad_token_id
        self.device = input_ids.device
        self.cache_mask = torch.zeros(input_ids.shape[0], 0, dtype=torch.long, device=self.device)
        image_groups = pixel_values.split(images_per_row) if pixel_values is not None else [None] * len(input_ids)
        self.rows = []
        for row_ids, row_mask, row_images in zip(input_ids.cpu(), attention_mask.cpu().bool(), image_groups):
            prompt = row_ids[row_mask]
            pending_pixel_values = [row_images] if row_images is not None and len(row_images) else []
            self.rows.append(
                DocumentRow(ids=prompt, prompt_length=len(prompt), pending_pixel_values=pending_pixel_values)
            )

    def __len__(self) -> int:
        return len(self.rows)

    @property
    def needs_forward(self) -> bool:
        return any(row.needs_forward for row in self.rows)

    @property
    def has_work(self) -> bool:
        """Whether a row has ids to feed, now or once its dream block stops waiting."""
        return self.needs_forward or any(row.waiting is not None for row in self.rows)

    def release_waiting_rows(self, window: int):
        """
        Lets every waiting dream block be fed, all in the next pass, once one of them has waited `window` passes or no
        other row has anything to feed; otherwise the waiting rows wait one pass more. With `window` 0 a dream block is
        fed in the pass after its `<dream_start>` was sampled.
        """
        waiting = [row for row in self.rows if row.waiting is not None]
        if not waiting:
            return
        if self.needs_forward and max(row.waiting for row in waiting) < window:
            for row in waiting:
                row.waiting += 1
            return
        for row in waiting:
            row.waiting = None

    def next_chunk(self) -> ForwardChunk:
        """
        Builds the next forward pass and marks its ids as fed; the cache mask grows by the chunk length.

        When some fed rows have a block pending (more than one id) and others a single token, the block rows go
        first, in a pass over only their rows (`ForwardChunk.rows_only`), so that no row is padded to another row's
        block; the single-token rows follow in the next pass. Passes of one id per row span the whole batch.
        """
        fed_rows = [index for index, row in enumerate(self.rows) if row.needs_forward]
        block_rows = [index for index in fed_rows if len(self.rows[index].pending_ids) > 1]
        rows_only = bool(block_rows) and len(block_rows) < len(self)
        if block_rows:
            fed_rows = block_rows
        length = max(len(self.rows[index].pending_ids) for index in fed_rows)
        input_ids = torch.full((len(self), length), self.pad_token_id, dtype=torch.long)
        chunk_mask = torch.zeros((len(self), length), dtype=torch.long)
        pixel_values = []
        for index in fed_rows:
            row = self.rows[index]
            pending = row.pending_ids
            input_ids[index, length - len(pending) :] = pending
            chunk_mask[index, length - len(pending) :] = 1
            pixel_values.extend(row.pending_pixel_values)
            row.pending_pixel_values = []
            row.num_fed = len(row.ids)
        self.cache_mask = torch.cat([self.cache_mask, chunk_mask.to(self.device)], dim=1)
        position_ids = (self.cache_mask.cumsum(-1) - 1).clamp(min=0)[:, -length:]
        attention_mask, input_ids = self.cache_mask, input_ids.to(self.device)
        if rows_only:
            selected = torch.tensor(fed_rows, device=self.device)
            input_ids, attention_mask, position_ids = input_ids[selected], attention_mask[selected], position_ids[selected]
        return ForwardChunk(
            input_ids=input_ids,
            attention_mask=attention_mask,
            position_ids=position_ids,
            pixel_values=torch.cat(pixel_values) if pixel_values else None,
            fed_rows=fed_rows,
            rows_only=rows_only,
        )

    def sequences(self) -> torch.LongTensor:
        """Every row's ids, left-padded to a common length: what logits processors and stopping criteria see."""
        rows = [row.ids for row in self.rows]
        sequences = pad_sequence(rows, batch_first=True, padding_value=self.pad_token_id, padding_side="left")
        return sequences.to(self.device)


@dataclass
class DocumentRun:
    """
    Everything the decoding loop needs, prepared from the call's arguments.

    Args:
        batch: The rows, their prompts encoded.
        generation_config, logits_processor, stopping_criteria: The merged decoding settings.
        max_images: The most images one document may hold.
        image_batch_window: How many passes a dream block may wait for other rows' (see
            [`DocumentBatch.release_waiting_rows`]).
        generator: The source of all randomness (one, or one per row).
        diffusion: The keyword arguments of `DreamLLMPipeline.draw_images` that stay the same for every image.
    """

    batch: DocumentBatch
    generation_config: GenerationConfig
    logits_processor: LogitsProcessorList
    stopping_criteria: StoppingCriteriaList
    max_images: int
    image_batch_window: int
    generator: torch.Generator | list[torch.Generator] | None
    diffusion: dict


__all__ = ["DocumentBatch", "DocumentRow", "DocumentRun", "ForwardChunk"]
