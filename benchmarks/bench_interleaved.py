"""Cost of interleaved documents with k = 0..4 images: wall time and language-model positions processed.

Each document has the same number of sampled tokens; a logits bias makes the model start an image at fixed points, so
only the number of images changes. The language model is hooked to count the positions it processes. Without
re-encoding, the count is

    unconditional pass (BOS + dream block) + prompt + sampled tokens - 1 + k x (queries + <dream_end> + image block)

(the last sampled token is never fed): linear in k, with nothing processed twice. A pipeline that re-encoded the
document after every image would instead process the whole prefix again k times; the last column shows that count.

A second table writes 4 prompts whose rows start their image at different steps ("staggered"), as one batch and as
4 sequential calls: positions are counted over the whole batch (rows x chunk length), so a row padded to another
row's block would show. A pass that feeds blocks runs on those rows alone.

`python benchmarks/bench_interleaved.py [--tokens 48] [--steps 10] [--repeats 3] [--threads 1]`.
"""

import argparse
import time

import torch
from bench_text_to_image import build_pipeline
from transformers import LogitsProcessor, LogitsProcessorList

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


def staggered(pipe, args, batch_positions: list[int]):
    """4 rows drawing one image each at different steps: one batched call against 4 sequential calls."""
    config = pipe.model.config
    offsets = [args.tokens // 8 * (row + 1) for row in range(4)]

    def write(rows: list[int]) -> float:
        start = time.perf_counter()
        output = pipe(
            [PROMPT] * len(rows), max_new_tokens=args.tokens, num_inference_steps=args.steps, max_images=1,
            logits_processor=LogitsProcessorList(
                [StartImagesPerRow(config.dream_start_token_id, config.pad_token_id, [offsets[r] for r in rows])]
            ),
            suppress_tokens=[config.text_config.eos_token_id], generator=torch.Generator().manual_seed(0),
        )
        assert all(len(images) == 1 for images in output.images)
        return time.perf_counter() - start

    batched = min(write([0, 1, 2, 3]) for _ in range(args.repeats))
    sequential = min(sum(write([row]) for row in range(4)) for _ in range(args.repeats))
    batch_positions.clear()
    write([0, 1, 2, 3])
    batched_positions = sum(batch_positions)
    batch_positions.clear()
    for row in range(4):
        write([row])
    sequential_positions = sum(batch_positions)
    print(f"\nstaggered rows (images at sampled token {offsets}): batch of 4 vs 4 sequential calls")
    print(" | seconds | LM positions (rows x length)")
    print(f" batch of 4 | {batched:7.2f} | {batched_positions:8d}")
    print(f" sequential | {sequential:7.2f} | {sequential_positions:8d}")
    print(f" ratio | speed-up {sequential / batched:.2f}x | positions {batched_positions / sequential_positions:.2f}x")


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tokens", type=int, default=48, help="sampled tokens per document")
    parser.add_argument("--steps", type=int, default=10, help="denoising steps per image")
    parser.add_argument("--repeats", type=int, default=3, help="runs per k; the fastest counts")
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
        assert len(output.images[0]) == num_images
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
    staggered(pipe, args, batch_positions)


if __name__ == "__main__":
    main()
