"""Accuracy of the toy-world DreamLLM on fixed prompts in the training and the held-out phrasings of its grammar,
judged by the toy world's pixel analyzer (the measures are in `dreamllm.toy_world.evaluation`).

    python benchmarks/evaluate_toy_model.py                  # the model shipped with the package
    python benchmarks/evaluate_toy_model.py --model DIR --json results.json

- caption_to_image: `text_to_image` on two training captions of every (colour, shape) pair; the picture must show
  that colour and shape.
- sized_caption_to_image: the same captions naming each size ("A picture of a small red circle.", "... large ...",
  one seed for both); the picture must also have a side in that size's range (`world.SIZE_RANGES`).
- creation: chat requests for one shape (some sized); the answer must hold exactly one picture, of the asked colour
  and shape.
- documents: chat requests for k = 2 and 3 shapes (free will: the model decides where each picture goes); the answer
  must hold exactly k pictures, each the asked colour and shape, in the asked order.
- comprehension: colour, shape and describe questions about pictures; the answer must name the right ones only.
- refusals: requests for what the world cannot draw ("Draw a cat."); the answer must be text without a picture.

Each measure (but the two caption ones) runs once in the training phrasings and once in the held-out ones.
Everything is seeded, so the figures are the same on every run on the same machine. The held-out pictures and prompts
use seeds that the training data of `python -m dreamllm.toy_world.build_toy_model` does not use.
"""

import argparse
import json
import textwrap
import time
from pathlib import Path

import numpy as np
import PIL.Image
import PIL.ImageDraw
import PIL.ImageFont
import torch
from diffusers import DDPMScheduler, DPMSolverMultistepScheduler

from dreamllm import DreamLLMPipeline
from dreamllm.toy_world import evaluation, grammar
from dreamllm.toy_world import world as toy_world

SCHEDULERS = {"ddpm": (DDPMScheduler, {}), "dpm-solver++": (DPMSolverMultistepScheduler, {"algorithm_type": "dpmsolver++"})}
MEASURES = ("caption_to_image", "sized_caption_to_image", "creation", "documents", "comprehension", "refusals")


def measure(name: str, split: str, pipe: DreamLLMPipeline, args) -> evaluation.Score:
    if name == "caption_to_image":
        return evaluation.caption_to_image(pipe, args.steps, args.guidance)
    if name == "sized_caption_to_image":
        return evaluation.caption_to_image(pipe, args.steps, args.guidance, sizes=tuple(toy_world.SIZE_RANGES))
    if name == "creation":
        return evaluation.documents(pipe, split, (1,), args.num_creations, args.steps, args.guidance)
    if name == "documents":
        return evaluation.documents(pipe, split, (2, 3), args.num_documents, args.steps, args.guidance)
    if name == "comprehension":
        return evaluation.comprehension(pipe, split, args.num_pictures)
    return evaluation.refusals(pipe, split, args.num_refusals, args.steps)


def document_picture(pipe: DreamLLMPipeline, prompt: str, seed: int, args) -> PIL.Image.Image:
    """One generated document drawn as a picture: the prompt, then each text segment and image in order, in a row."""
    generator = torch.Generator().manual_seed(seed)
    output = pipe(prompt, num_inference_steps=args.steps, guidance_scale=args.guidance, generator=generator)
    scale, font = 2, PIL.ImageFont.load_default()
    parts = [f"USER: {prompt}", *output.documents[0]]
    widths = [150 if isinstance(part, str) else 64 * scale + 16 for part in parts]
    canvas = PIL.Image.new("RGB", (sum(widths), 64 * scale + 16), "white")
    draw = PIL.ImageDraw.Draw(canvas)
    for left, width, part in zip(np.cumsum([0, *widths[:-1]]).tolist(), widths, parts):
        if isinstance(part, str):
            draw.multiline_text((left + 8, 8), "\n".join(textwrap.wrap(part, 22)), fill="black", font=font)
        else:
            canvas.paste(part.resize((64 * scale, 64 * scale), PIL.Image.NEAREST), (left + 8, 8))
    return canvas


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default=None, help="a saved DreamLLMPipeline (default: the built-in toy model)")
    parser.add_argument("--steps", type=int, default=50, help="denoising steps per picture (default 50)")
    parser.add_argument("--guidance", type=float, default=7.5, help="classifier-free guidance scale (default 7.5)")
    parser.add_argument("--num-pictures", type=int, default=40, help="pictures for comprehension (3 questions each)")
    parser.add_argument("--num-creations", type=int, default=24, help="chat requests for one shape")
    parser.add_argument("--num-documents", type=int, default=12, help="chat requests per k = 2, 3 for documents")
    parser.add_argument("--num-refusals", type=int, default=12, help="requests the toy world cannot draw")
    parser.add_argument("--only", choices=MEASURES, action="append")
    parser.add_argument("--splits", choices=grammar.SPLITS, nargs="+", default=list(grammar.SPLITS))
    parser.add_argument("--scheduler", choices=tuple(SCHEDULERS), default=None,
                        help="replace the model's scheduler (default: the one saved with it)")
    parser.add_argument("--show-failures", action="store_true")
    parser.add_argument("--json", type=Path, help="also write the figures to this file")
    parser.add_argument("--picture", type=Path, help="also draw the README's example document into this PNG")
    args = parser.parse_args()
    pipe = DreamLLMPipeline.from_pretrained(args.model)
    pipe.set_progress_bar_config(disable=True)
    if args.scheduler:
        scheduler_class, options = SCHEDULERS[args.scheduler]
        pipe.scheduler = scheduler_class.from_config(pipe.scheduler.config, **options)
    results = {"steps": args.steps, "guidance": args.guidance, "scheduler": type(pipe.scheduler).__name__}
    for split in args.splits:
        for name in args.only or MEASURES:
            if name.endswith("caption_to_image") and split != "train":
                continue  # captions are training texts only
            start = time.perf_counter()
            score = measure(name, split, pipe, args)
            seconds = time.perf_counter() - start
            results.setdefault(split, {})[name] = {**score.as_dict(), "seconds": round(seconds, 1)}
            print(f"{split:<9} {name:<17} {score.correct:>4}/{score.total:<4} = {100 * score.accuracy:5.1f} %"
                  f"   ({seconds:.0f} s)", flush=True)
            if args.show_failures:
                for failure in score.failures:
                    print("   ", failure)
    if args.json:
        args.json.write_text(json.dumps(results, indent=2) + "\n")
    if args.picture:
        document_picture(pipe, "Show me a red circle and then a blue triangle.", 0, args).save(args.picture)


if __name__ == "__main__":
    main()
