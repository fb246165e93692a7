"""transformers generation on DreamLLM: every decoding entry point with images, and what plain generation may write."""

import pytest
import torch
from transformers import GenerationConfig
from transformers.utils import logging

from dreamllm import DreamLLMForCausalLM
from dreamllm.modeling_dreamllm import pipeline_only_token_ids
from dreamllm.testing import tiny_model_and_processor
from test_modeling import prompt_inputs, random_images

TOY_MODEL = __import__("pathlib").Path(__import__("dreamllm").__file__).parent / "toy_model"


def image_prompts(processor):
    texts = ["a <image> b c", "<image> d <image> e f"]
    return prompt_inputs(processor, texts, random_images(3), padding=True)


def new_tokens(sequences, prompt_length):
    return sequences[:, prompt_length:]


@pytest.mark.parametrize("num_beams", [1, 2])
@torch.no_grad()
def test_generate_from_inputs_embeds_with_pixel_values_equals_generate_from_ids(tiny, num_beams):
    model, processor = tiny
    processor.tokenizer.padding_side = "left"
    inputs = image_prompts(processor)
    settings = dict(max_new_tokens=6, do_sample=False, num_beams=num_beams)
    from_ids = model.generate(**inputs, **settings)
    from_embeds = model.generate(
        inputs_embeds=model.get_input_embeddings()(inputs.input_ids), pixel_values=inputs.pixel_values,
        attention_mask=inputs.attention_mask, **settings,
    )
    assert torch.equal(from_embeds, new_tokens(from_ids, inputs.input_ids.shape[1]))


@torch.no_grad()
def test_assisted_and_prompt_lookup_decoding_with_images_equal_greedy(tiny):
    model, processor = tiny
    assistant, _ = tiny_model_and_processor(seed=1)
    inputs = prompt_inputs(processor, ["a <image> b c a <image> b"], random_images(2))
    settings = dict(max_new_tokens=8, do_sample=False)
    greedy = model.generate(**inputs, **settings)
    assert torch.equal(model.generate(**inputs, assistant_model=assistant, **settings), greedy)
    assert torch.equal(model.generate(**inputs, prompt_lookup_num_tokens=3, **settings), greedy)


def model_that_wants_to_draw(seed: int = 0) -> tuple[DreamLLMForCausalLM, object]:
    """A tiny model whose head favours the pipeline-only tokens most, then <dream_start>."""
    model, processor = tiny_model_and_processor(seed=seed)
    with torch.no_grad():
        model.lm_head.weight[pipeline_only_token_ids(model.config)] = 0.0
        model.lm_head.weight[model.config.dream_start_token_id] = 0.0
        bias = torch.zeros(model.config.text_config.vocab_size)
        bias[pipeline_only_token_ids(model.config)] = 200.0
        bias[model.config.dream_start_token_id] = 100.0
    model.lm_head.register_forward_hook(lambda module, args, output: output + bias)
    return model, processor


@pytest.mark.parametrize("do_sample", [False, True])
def test_plain_generate_never_writes_pipeline_only_tokens_and_stops_at_dream_start(do_sample, caplog):
    model, processor = model_that_wants_to_draw()
    inputs = prompt_inputs(processor, ["a <image> b"], random_images(1))
    logging.warning_once.cache_clear()
    with torch.no_grad(), caplog.at_level("WARNING"):
        sequences = model.generate(**inputs, max_new_tokens=5, do_sample=do_sample)
        model.generate(**inputs, max_new_tokens=5, do_sample=do_sample)
    assert new_tokens(sequences, inputs.input_ids.shape[1]).tolist() == [[model.config.dream_start_token_id]]
    assert caplog.text.count("DreamLLMPipeline") == 1


def test_saved_generation_config_carries_the_suppression_and_the_stop(tiny, tmp_path):
    model, _ = tiny
    model.save_pretrained(tmp_path)
    saved = GenerationConfig.from_pretrained(tmp_path)
    config = model.config
    assert sorted(saved.suppress_tokens) == sorted(pipeline_only_token_ids(config))
    assert config.dream_start_token_id in saved.eos_token_id
    assert config.text_config.eos_token_id in saved.eos_token_id
    assert config.dream_start_token_id not in saved.suppress_tokens


def test_the_built_in_toy_model_ships_the_suppression_and_the_stop():
    toy = GenerationConfig.from_pretrained(TOY_MODEL)
    config = DreamLLMForCausalLM.config_class.from_pretrained(TOY_MODEL)
    assert sorted(toy.suppress_tokens) == sorted(pipeline_only_token_ids(config))
    assert config.dream_start_token_id in toy.eos_token_id
