"""Generation with a static KV cache (the cache `torch.compile`d decoding needs) gives the dynamic cache's tokens."""

import numpy as np
import pytest
import torch
from PIL import Image
from transformers import StaticCache

from dreamllm import DreamLLMForCausalLM
from modeling_dreamllm.modeling_dreamllm import CACHE_ARGUMENT


def picture(seed: int) -> Image.Image:
    return Image.fromarray(np.random.RandomState(seed).randint(0, 255, (20, 20, 3), dtype=np.uint8))


def greedy(model, inputs, **kwargs) -> torch.LongTensor:
    return model.generate(**inputs, max_new_tokens=8, min_new_tokens=8, do_sample=False, **kwargs)


@pytest.mark.parametrize(
    "texts, images",
    [
        (["a cat sat on the"], None),
        (["<image> What is it?"], [picture(0)]),
        (["<image> What is it?", "short <image>"], [picture(0), picture(1)]),  # left-padded batch
    ],
    ids=["text", "image", "padded-batch-with-images"],
)
def test_static_cache_generation_equals_dynamic_cache(tiny, texts, images):
    model, processor = tiny
    processor.tokenizer.padding_side = "left"
    inputs = processor(text=texts, images=images, return_tensors="pt", padding=True)
    dynamic = greedy(model, inputs)
    static = greedy(model, inputs, cache_implementation="static")
    assert torch.equal(static, dynamic)


def test_a_static_cache_passed_in_is_filled_by_generation(tiny):
    model, processor = tiny
    inputs = processor(text=["<image> What is it?"], images=[picture(0)], return_tensors="pt")
    cache = StaticCache(config=model.config, max_cache_len=inputs["input_ids"].shape[1] + 8)
    static = greedy(model, inputs, **{CACHE_ARGUMENT: cache})
    assert torch.equal(static, greedy(model, inputs))
    assert int(cache.get_seq_length()) == static.shape[1] - 1


def test_the_model_declares_fullgraph_compilation():
    assert DreamLLMForCausalLM._can_compile_fullgraph
