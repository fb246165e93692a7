"""The toy world and the built-in toy-world DreamLLM made from it.

- `dreamllm.toy_world.grammar`: the request language (many ways to ask for pictures and about one), each
  production split into training and held-out phrasings.
- `dreamllm.toy_world.world`: one filled shape on a white 64x64 canvas, the texts about it (captions, questions,
  creation requests, interleaved documents), the JSON Lines datasets of `dreamllm.training`, and the pixel analyzer
  that judges pictures. Its public names are re-exported here (`toy_world.write_dataset(...)`).
- `dreamllm.toy_world.components`: the toy world's small VAE, UNet and CLIP vision tower, their pretraining, the toy
  tokenizer and the assembly of a DreamLLMPipeline from them.
- `python -m dreamllm.toy_world.build_toy_model`: the resumable recipe that builds the model shipped as
  `dreamllm.TOY_MODEL_PATH` (package data in `dreamllm/toy_model/`).
"""

from . import grammar
from .world import (
    CAPTION_TEMPLATES,
    COLOUR_NAMES,
    COLOURS,
    IMAGE_SIZE,
    MAX_SIZE,
    MIN_SIZE,
    SAMPLE_KINDS,
    SIZE_RANGES,
    SHAPES,
    ANSWERS,
    Scene,
    analyze_image,
    answer_document,
    caption,
    classify_colour,
    classify_shape,
    creation_prompt,
    interleaved_document,
    make_sample,
    measure_size,
    question_answer,
    render_shape,
    sample_objects,
    sample_rng,
    sample_scene,
    sample_sizes,
    shape_mask,
    short_description,
    size_matches,
    write_dataset,
)

__all__ = [
    "grammar",
    "CAPTION_TEMPLATES",
    "COLOURS",
    "COLOUR_NAMES",
    "IMAGE_SIZE",
    "MAX_SIZE",
    "MIN_SIZE",
    "SAMPLE_KINDS",
    "SIZE_RANGES",
    "SHAPES",
    "ANSWERS",
    "Scene",
    "analyze_image",
    "answer_document",
    "caption",
    "classify_colour",
    "classify_shape",
    "creation_prompt",
    "interleaved_document",
    "make_sample",
    "measure_size",
    "question_answer",
    "render_shape",
    "sample_objects",
    "sample_rng",
    "sample_scene",
    "sample_sizes",
    "shape_mask",
    "short_description",
    "size_matches",
    "write_dataset",
]
