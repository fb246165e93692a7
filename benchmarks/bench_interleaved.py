"""Cost of interleaved documents with k = 0..4 images: wall time and language-model positions processed.

Each document has the same number of sampled tokens; a logits bias makes the model start an image at fixed points, so
only the number of images changes. The language model is hooked to count the positions it processes. Without
re-encoding, the count is

    unconditional pass (BOS + dream block) + prompt + sampled tokens - 1 + k x (queries + <dream_end> + image block)

(the last sampled token is never fed): linear in k, with nothing processed twice. A pipeline that re-encoded the
document after every image would instead process the whole prefix again k times; the last column shows that count.

A second table writes several prompts as one batch and as one call per prompt, each row with its own generator (so
both give the same documents, which the script checks): rows that start their image at different steps
("staggered"), at the same step ("aligned"), and text-only rows. Positions are counted over the whole batch (rows x
chunk length), so a row padded to another row's block would show. Staggered rows wait for each other (up to the
pipeline's default image_batch_window) and have their images drawn in one batched denoising loop.

`python benchmarks/bench_interleaved.py [--tokens 48] [--steps 10] [--repeats 3] [--threads 1]`.
"""

import argparse
import statistics
import time

import numpy as np
import torch
from bench_text_to_image import build_pipeline
from transformers import LogitsProcessor, LogitsProcessorList

from dreamllm.pipelines import document_images

PROMPT = "Write a short illustrated story about a fox who learns to paint."


class StartImagesAt(LogitsProcessor):
    """Adds a large bias to `<dream_start>` when the document holds exactly one of `offsets` ids."""

    def __init__(self, dream_start_token_id: int, offsets: set[int]):
        self.dream_start_token_id, self.offsets, self.prompt_length = dream_start_token_id, offsets, None

    def __call__(self, input_ids, scores):
        self.prompt_length = self.prompt_length or input_ids.shape[1]
        if input_ids.shape[1] - self.prompt_length in self.offsets:
            scores[:, self.dream_start_token_id] += 1e4
        return scores


class StartImagesPerRow(LogitsProcessor):
    """Adds a large bias to `<dream_start>` in row r when it holds exactly `offsets[r]` ids after its prompt."""

    def __init__(self, dream_start_token_id: int, pad_token_id: int, offsets: list[int]):
        self.dream_start_token_id, self.pad_token_id, self.offsets = dream_start_token_id, pad_token_id, offsets
        self.prompt_lengths = None

    def __call__(self, input_ids, scores):
        lengths = (input_ids != self.pad_token_id).sum(1)
        if self.prompt_lengths is None:
            self.prompt_lengths = lengths.clone()
        for row, offset in enumerate(self.offsets):
            if int(lengths[row] - self.prompt_lengths[row]) == offset:
                scores[row, self.dream_start_token_id] += 1e4
        return scores


def batch_against_sequential(pipe, args, batch_positions: list[int], name: str, offsets: list[int | None]):
    """
    Rows drawing one image each at the given sampled-token offsets (`None`: a text-only row), one generator per row:
    one batched call against one call per row, timed in interleaved repeats (median), positions counted once. The
    batched documents are checked to equal the per-row ones (images to float rounding).
    """
    config = pipe.model.config

    def write(rows: list[int]):
        row_offsets = [offsets[row] for row in rows]
        output = pipe(
            [PROMPT] * len(rows), max_new_tokens=args.tokens, num_inference_steps=args.steps,
            max_images=0 if None in row_offsets else 1, output_type="np",
            logits_processor=LogitsProcessorList(
                [StartImagesPerRow(config.dream_start_token_id, config.pad_token_id, row_offsets)]
            ),
            suppress_tokens=[config.text_config.eos_token_id],
            generator=[torch.Generator().manual_seed(row) for row in rows],
        )
        assert all(len(document_images(document)) == (offsets[row] is not None)
                   for row, document in zip(rows, output.documents))
        return output

    def timed(function) -> float:
        start = time.perf_counter()
        function()
        return time.perf_counter() - start

    rows = list(range(len(offsets)))
    batched, sequential = [], []
    for _ in range(args.repeats):
        batched.append(timed(lambda: write(rows)))
        sequential.append(timed(lambda: [write([row]) for row in rows]))
    batch_positions.clear()
    documents = write(rows).documents
    batched_positions = sum(batch_positions)
    batch_positions.clear()
    for row in rows:
        alone = write([row]).documents[0]
        assert all(part == other if isinstance(part, str) else np.allclose(part, other, atol=1e-4)
                   for part, other in zip(documents[row], alone, strict=True))
    sequential_positions = sum(batch_positions)
    batched, sequential = statistics.median(batched), statistics.median(sequential)
    print(f" {name:<44} | {batched:7.2f} | {sequential:10.2f} | {sequential / batched:7.2f}x | "
          f"{batched_positions:8d} | {sequential_positions:10d} | {batched_positions / sequential_positions:7.2f}x")


def batches(pipe, args, batch_positions: list[int]):
    """Batches of rows with their own generators against one call per row: staggered, aligned and text-only rows."""
    window = 2 * args.steps
    step = args.tokens // 8
    print(f"\nbatched call vs one call per row (one generator per row, image_batch_window {window}, medians of "
          f"{args.repeats} interleaved repeats; positions = rows x chunk length)")
    print(f" {'rows (sampled token where each starts its image)':<44} | batched | sequential | speed-up | "
          f"positions | sequential | ratio")
    cases = {
        "4 staggered": [step * (row + 1) for row in range(4)],
        "2 staggered": [step, 3 * step],
        "4 aligned": [step] * 4,
        "4 text-only": [None] * 4,
    }
    for name, offsets in cases.items():
        batch_against_sequential(pipe, args, batch_positions, f"{name} {offsets}", offsets)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tokens", type=int, default=48, help="sampled tokens per document")
    parser.add_argument("--steps", type=int, default=10, help="denoising steps per image")
    parser.add_argument("--repeats", type=int, default=3, help="runs per k (the fastest counts) and per batch case (the median counts)")
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    pipe = build_pipeline()
    pipe.set_progress_bar_config(disable=True)
    config = pipe.model.config
    block = config.num_dream_queries + 1 + config.num_image_tokens + 2
    positions, batch_positions = [], []

    def count_positions(module, hook_args, kwargs):
        positions.append(kwargs["inputs_embeds"].shape[1])
        batch_positions.append(kwargs["inputs_embeds"].shape[0] * kwargs["inputs_embeds"].shape[1])

    pipe.model.model.language_model.register_forward_pre_hook(count_positions, with_kwargs=True)
    prompt_length = len(pipe.processor(text=pipe.prepare_document_prompts(PROMPT, None, True)[0]).input_ids[0])
    unconditional = 1 + config.num_dream_queries + 2
    spacing = args.tokens // 5

    def write(num_images: int) -> float:
        offsets = {spacing * (index + 1) + index * block for index in range(num_images)}
        start = time.perf_counter()
        output = pipe(
            PROMPT, max_new_tokens=args.tokens, num_inference_steps=args.steps, max_images=4,
            logits_processor=LogitsProcessorList([StartImagesAt(config.dream_start_token_id, offsets)]),
            suppress_tokens=[config.text_config.eos_token_id], generator=torch.Generator().manual_seed(0),
        )
        assert len(output.images) == num_images
        return time.perf_counter() - start

    write(1)  # warm-up
    print(f"prompt {prompt_length} tokens, {args.tokens} sampled tokens, {config.num_dream_queries} dream queries, "
          f"{config.num_image_tokens} image tokens, {args.steps} denoising steps, {args.threads} threads, "
          f"best of {args.repeats} runs")
    print(" k | seconds | s/image | LM positions | expected (no re-encoding) | re-encoding pipeline")
    baseline = None
    for num_images in range(5):
        seconds = min(write(num_images) for _ in range(args.repeats))
        positions.clear()
        write(num_images)
        expected = unconditional + prompt_length + args.tokens - 1 + num_images * block
        prefixes = [prompt_length + spacing * (index + 1) + (index + 1) * block for index in range(num_images)]
        baseline = baseline or seconds
        per_image = (seconds - baseline) / num_images if num_images else 0.0
        print(f" {num_images} | {seconds:7.2f} | {per_image:7.2f} | {sum(positions):12d} | {expected:25d} | "
              f"{expected + sum(prefixes):20d}")
    batches(pipe, args, batch_positions)


if __name__ == "__main__":
    main()
