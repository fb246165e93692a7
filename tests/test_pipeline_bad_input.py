"""Bad numbers and malformed inputs are refused before any work, with the argument named; the unconditional condition
of guidance is computed once per call, on its first draw."""

import math

import pytest
import torch
from drawing import draw_first

from dreamllm.testing import tiny_pipeline

pytestmark = pytest.mark.usefixtures("single_thread")

CONDITION = (4, 8)  # num_dream_queries, condition_dim of the tiny model


@pytest.fixture(scope="module")
def pipe():
    return tiny_pipeline(seed=0)


BOTH_ENTRY_POINTS = [
    ({"guidance_scale": math.nan}, "guidance_scale must be a finite number >= 0, got nan"),
    ({"guidance_scale": math.inf}, "guidance_scale must be a finite number >= 0, got inf"),
    ({"height": 0}, "height must be a positive multiple of the VAE scale factor 4, got 0"),
    ({"width": -8}, "width must be a positive multiple"),
    ({"height": 65536}, "height must be at most 4096 pixels, got 65536"),
    ({"width": 4100}, "width must be at most 4096 pixels"),
    ({"height": 32.0}, "height must be a positive multiple"),
]

TEXT_TO_IMAGE = [
    ({"prompt": []}, "prompt must be a string or a non-empty list of strings"),
    ({"prompt": ["a", 3]}, "prompt must be a string or a non-empty list of strings"),
    ({"prompt": None, "prompt_embeds": torch.zeros(1, 3, 8)}, r"prompt_embeds must have shape \(batch, 4, 8\), got \(1, 3, 8\)"),
    ({"prompt": None, "prompt_embeds": torch.zeros(4, 8)}, r"prompt_embeds must have shape \(batch, 4, 8\)"),
    ({"prompt": None, "prompt_embeds": torch.full((1, *CONDITION), math.nan)}, "prompt_embeds holds NaN or infinite"),
    ({"negative_prompt_embeds": torch.full((1, *CONDITION), math.inf)}, "negative_prompt_embeds holds NaN or infinite"),
    ({"negative_prompt_embeds": torch.zeros(3, *CONDITION)}, "negative_prompt_embeds holds 3 conditions for 1 prompts"),
    ({"latents": torch.full((1, 4, 8, 8), math.nan)}, "latents holds NaN or infinite values"),
]

INTERLEAVED = [
    ({"prompt": [{"role": "user"}]}, "Message 0 of the conversation has no content"),
    ({"prompt": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": None}]},
     "Message 1 of the conversation has no content"),
]


@pytest.mark.parametrize("arguments, message", BOTH_ENTRY_POINTS + TEXT_TO_IMAGE)
def test_text_to_image_refuses_bad_input_before_any_work(pipe, arguments, message, monkeypatch):
    monkeypatch.setattr(pipe.unet, "forward", lambda *a, **k: pytest.fail("the UNet ran"))
    with pytest.raises(ValueError, match=message):
        pipe.text_to_image(**{"prompt": "a cat", "num_inference_steps": 1, **arguments})


@pytest.mark.parametrize("arguments, message", BOTH_ENTRY_POINTS + INTERLEAVED)
def test_interleaved_generation_refuses_bad_input_before_any_work(pipe, arguments, message, monkeypatch):
    monkeypatch.setattr(pipe.model, "forward", lambda *a, **k: pytest.fail("the language model ran"))
    with pytest.raises(ValueError, match=message):
        pipe(**{"prompt": "hi", "num_inference_steps": 1, **arguments})


@pytest.mark.parametrize("images_drawn, expected_computations", [(0, 0), (1, 1), (2, 1)])
def test_unconditional_condition_is_computed_on_the_first_draw_once_per_call(pipe, monkeypatch, images_drawn,
                                                                           expected_computations):
    computations = []
    compute = pipe.model.get_unconditional_dream_conditions
    monkeypatch.setattr(pipe.model, "get_unconditional_dream_conditions",
                        lambda *args, **kwargs: computations.append(1) or compute(*args, **kwargs))
    output = pipe("hi", num_inference_steps=1, guidance_scale=3.0, max_images=images_drawn,
                  **draw_first(pipe, max_new_tokens=12))
    assert len(output.images) == images_drawn
    assert len(computations) == expected_computations
