"""Accuracy of the toy-world DreamLLM on a fixed held-out set, judged by the toy world's pixel analyzer.

    python benchmarks/evaluate_toy_model.py                  # the model shipped with the package
    python benchmarks/evaluate_toy_model.py --model DIR --json results.json

- creation: `text_to_image` on captions of every (colour, shape) pair; the picture must show that colour and shape.
- comprehension: questions about the colour and the shape of held-out pictures; the answer must name the right one
  and no other.
- free will: chat prompts asking for k = 1, 2, 3 shapes; the document must hold exactly k pictures, each the asked
  colour and shape, in the asked order.

Everything is seeded, so the figures are the same on every run on the same machine. The held-out pictures and prompts
use seeds that the training data of `python -m dreamllm.toy_world.build_toy_model` does not use.
"""

import argparse
import json
import re
import textwrap
import time
from pathlib import Path

import numpy as np
import PIL.Image
import PIL.ImageDraw
import PIL.ImageFont
import torch

from dreamllm import DreamLLMPipeline
from dreamllm import toy_world

HELD_OUT_SEED = 10_000
COLOUR_QUESTION = "What colour is the shape?"
SHAPE_QUESTION = "What shape is this?"
CREATION_CAPTIONS = ("A picture of {a}.", "This is {a}.")


def words(text: str) -> set[str]:
    return set(re.findall(r"[a-z]+", text.lower()))


def creation(pipe: DreamLLMPipeline, args) -> tuple[int, int, list]:
    """Pictures for captions of all 18 (colour, shape) pairs, `len(CREATION_CAPTIONS)` captions each."""
    pairs = [(colour, shape) for colour in toy_world.COLOUR_NAMES for shape in toy_world.SHAPES]
    prompts = [template.format(a=toy_world.short_description(*pair)) for template in CREATION_CAPTIONS for pair in pairs]
    expected = [pair for _ in CREATION_CAPTIONS for pair in pairs]
    generators = [torch.Generator().manual_seed(HELD_OUT_SEED + i) for i in range(len(prompts))]
    images = pipe.text_to_image(
        prompts, num_inference_steps=args.steps, guidance_scale=args.guidance, generator=generators
    ).images
    judged = [toy_world.analyze_image(image) for image in images]
    failures = [(p, j) for p, j, e in zip(prompts, judged, expected) if j != e]
    return len(prompts) - len(failures), len(prompts), failures


def comprehension(pipe: DreamLLMPipeline, args) -> tuple[int, int, list]:
    """Two questions (colour, shape) about each of `args.num_pictures` held-out pictures."""
    correct, total, failures = 0, 0, []
    for index in range(args.num_pictures):
        scene = toy_world.sample_scene(toy_world.sample_rng(HELD_OUT_SEED, index))
        for question, truth, options in (
            (COLOUR_QUESTION, scene.colour, toy_world.COLOUR_NAMES),
            (SHAPE_QUESTION, scene.shape, toy_world.SHAPES),
        ):
            answer = pipe(question, images=[scene.render()], max_images=0, max_new_tokens=16).text[0]
            named = words(answer) & set(options)
            total += 1
            if named == {truth}:
                correct += 1
            else:
                failures.append((question, truth, answer))
    return correct, total, failures


def free_will(pipe: DreamLLMPipeline, args) -> tuple[int, int, list]:
    """`args.num_documents` chat prompts for each k = 1, 2, 3 shapes."""
    correct, total, failures = 0, 0, []
    for k in (1, 2, 3):
        for index in range(args.num_documents):
            rng = toy_world.sample_rng(HELD_OUT_SEED + k, index)
            objects = toy_world.sample_objects(rng, min_objects=k, max_objects=k)
            prompt = toy_world.creation_prompt(objects, template=index % len(toy_world.PROMPT_TEMPLATES))
            output = pipe(
                prompt,
                num_inference_steps=args.steps,
                guidance_scale=args.guidance,
                generator=torch.Generator().manual_seed(HELD_OUT_SEED + 100 * k + index),
                max_new_tokens=96,
            )
            judged = [toy_world.analyze_image(image) for image in output.images[0]]
            total += 1
            if judged == objects:
                correct += 1
            else:
                failures.append((prompt, judged, output.text[0]))
    return correct, total, failures


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
    parser.add_argument("--num-pictures", type=int, default=60, help="held-out pictures for comprehension")
    parser.add_argument("--num-documents", type=int, default=20, help="documents per k for free will")
    parser.add_argument("--only", choices=("creation", "comprehension", "free_will"), action="append")
    parser.add_argument("--show-failures", action="store_true")
    parser.add_argument("--json", type=Path, help="also write the figures to this file")
    parser.add_argument("--picture", type=Path, help="also draw the README's example document into this PNG")
    args = parser.parse_args()
    pipe = DreamLLMPipeline.from_pretrained(args.model)
    pipe.set_progress_bar_config(disable=True)
    results = {}
    for name in args.only or ("creation", "comprehension", "free_will"):
        start = time.perf_counter()
        correct, total, failures = globals()[name](pipe, args)
        seconds = time.perf_counter() - start
        results[name] = {"correct": correct, "total": total, "accuracy": correct / total, "seconds": round(seconds, 1)}
        print(f"{name:<14} {correct:>4}/{total:<4} = {100 * correct / total:5.1f} %   ({seconds:.0f} s)", flush=True)
        if args.show_failures:
            for failure in failures:
                print("   ", failure)
    if args.json:
        args.json.write_text(json.dumps(results, indent=2) + "\n")
    if args.picture:
        document_picture(pipe, "Show me a red circle and then a blue triangle.", 0, args).save(args.picture)


if __name__ == "__main__":
    main()
