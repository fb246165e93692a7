"""Measures a toy-world DreamLLM on fixed, seeded prompts in the training or the held-out phrasings of `grammar`,
judged by the pixel analyzer (`world.analyze_image`).

Each measure returns a :class:`Score`. The prompts and pictures use seeds from :data:`EVALUATION_SEED` on, which the
training data of `python -m dreamllm.toy_world.build_toy_model` (seeds below 1000) does not use.
"""

from __future__ import annotations

import itertools
import re
from dataclasses import dataclass, field

import torch

from . import grammar
from . import world as toy_world

EVALUATION_SEED = 10_000


@dataclass
class Score:
    """How many of `total` cases came out right, and what went wrong in the others."""

    correct: int = 0
    total: int = 0
    failures: list[tuple] = field(default_factory=list)

    @property
    def accuracy(self) -> float:
        return self.correct / self.total if self.total else 0.0

    def add(self, right: bool, failure: tuple):
        self.total += 1
        self.correct += right
        if not right:
            self.failures.append(failure)

    def as_dict(self) -> dict:
        return {"correct": self.correct, "total": self.total, "accuracy": self.accuracy}


def words(text: str) -> set[str]:
    return set(re.findall(r"[a-z]+", text.lower()))


def caption_to_image(pipe, steps: int, guidance: float, sizes: tuple[str | None, ...] = (None,)) -> Score:
    """`text_to_image` of two training captions ("A picture of a red circle.", "This is ...") per (colour, shape) and
    size in `sizes` (None: no size word; a key of `world.SIZE_RANGES`: "a small red circle"): right when the picture
    shows that colour and shape, at a side in that size's range. Each caption's sizes share one seed, so a size word
    the model ignores gives the same picture for every size."""
    pairs = [(colour, shape) for colour in toy_world.COLOUR_NAMES for shape in toy_world.SHAPES]
    templates = ("A picture of {a}.", "This is {a}.")
    captions = list(itertools.product(templates, pairs))
    cases = [(seed, template, size, pair) for seed, (template, pair) in enumerate(captions) for size in sizes]
    prompts = [template.format(a=grammar.object_phrase(*pair, size, None, "train")) for _, template, size, pair in cases]
    generators = [torch.Generator().manual_seed(EVALUATION_SEED + seed) for seed, *_ in cases]
    images = pipe.text_to_image(prompts, num_inference_steps=steps, guidance_scale=guidance, generator=generators).images
    score = Score()
    for prompt, image, (_, _, size, pair) in zip(prompts, images, cases):
        judged = toy_world.analyze_image(image)
        score.add(judged == pair and toy_world.size_matches(image, pair[1], size),
                  (prompt, judged, toy_world.measure_size(image, pair[1])))
    return score


def documents(pipe, split: str, num_objects: tuple[int, ...], per_count: int, steps: int, guidance: float) -> Score:
    """Chat requests (phrased in `split`, some naming sizes) for k shapes, `per_count` per k: right when the answer
    holds exactly k pictures, each the asked colour and shape (and size, where one is asked), in the asked order."""
    score = Score()
    for k in num_objects:
        for index in range(per_count):
            rng = toy_world.sample_rng(EVALUATION_SEED + k, index)
            objects = toy_world.sample_objects(rng, min_objects=k, max_objects=k)
            sizes = toy_world.sample_sizes(rng, k)
            prompt = toy_world.creation_prompt(objects, rng, sizes, split)
            output = pipe(
                prompt,
                num_inference_steps=steps,
                guidance_scale=guidance,
                generator=torch.Generator().manual_seed(EVALUATION_SEED + 100 * k + index),
                max_new_tokens=96,
            )
            pictures = output.images
            judged = [toy_world.analyze_image(image) for image in pictures]
            sized = all(toy_world.size_matches(image, shape, size)
                        for image, (_, shape), size in zip(pictures, objects, sizes))
            score.add(judged == objects and sized, (prompt, judged, output.text[0]))
    return score


def comprehension(pipe, split: str, num_pictures: int) -> Score:
    """A colour, a shape and a describe question (phrased in `split`) about each of `num_pictures` pictures: right
    when the answer names the right colour and/or shape and no other."""
    score = Score()
    for index in range(num_pictures):
        rng = toy_world.sample_rng(EVALUATION_SEED, index)
        scene = toy_world.sample_scene(rng)
        for asks in grammar.QUESTIONS:
            question, _ = toy_world.question_answer(scene, rng, asks, split)
            answer = pipe(question, images=[scene.render()], max_images=0, max_new_tokens=16).text[0]
            colours, shapes = words(answer) & set(toy_world.COLOUR_NAMES), words(answer) & set(toy_world.SHAPES)
            right = {
                "colour": colours == {scene.colour},
                "shape": shapes == {scene.shape},
                "describe": colours == {scene.colour} and shapes == {scene.shape},
            }[asks]
            score.add(right, (question, (scene.colour, scene.shape), answer))
    return score


def refusals(pipe, split: str, num_prompts: int, steps: int) -> Score:
    """Requests (phrased in `split`) for things the world cannot draw: right when the answer is text only."""
    score = Score()
    for index in range(num_prompts):
        prompt = grammar.impossible_request(toy_world.sample_rng(EVALUATION_SEED + 7, index), split)
        output = pipe(prompt, num_inference_steps=steps, max_new_tokens=48,
                      generator=torch.Generator().manual_seed(EVALUATION_SEED + index))
        score.add(not output.images and bool(output.text[0].strip()), (prompt, output.text[0]))
    return score
