"""The transformers model contract of DreamLLM, as transformers' own common tests and Llava's define it."""

import warnings

import pytest
import torch
from transformers import DynamicCache
from transformers.modeling_outputs import BaseModelOutputWithPooling

from dreamllm import DreamLLMConfig
from dreamllm.modeling_dreamllm.modeling_dreamllm import CACHE_ARGUMENT
from test_modeling import prompt_inputs, random_images


def image_prompt(processor, texts=("a <image> b <dream> c",), images=1, **kwargs):
    return prompt_inputs(processor, list(texts), random_images(images * len(texts)), **kwargs)


# --- get_image_features and image_outputs ------------------------------------------------------------------------------


@torch.no_grad()
def test_get_image_features_returns_the_vision_output_with_projected_pooler_output(tiny):
    model, processor = tiny
    pixel_values = image_prompt(processor).pixel_values
    for module in (model, model.model):
        outputs = module.get_image_features(pixel_values)
        assert isinstance(outputs, BaseModelOutputWithPooling)
        assert outputs.pooler_output.shape == (1, model.config.num_image_tokens, model.config.text_config.hidden_size)
        assert outputs.hidden_states is None and outputs.attentions is None
    layers = model.config.vision_config.num_hidden_layers
    with_states = model.get_image_features(pixel_values, output_hidden_states=True)
    assert len(with_states.hidden_states) == layers + 1
    expected = model.model.vision_projector(with_states.hidden_states[model.config.vision_feature_layer][:, 1:])
    torch.testing.assert_close(with_states.pooler_output, expected, rtol=0, atol=0)
    model.set_attn_implementation("eager")
    with_attentions = model.get_image_features(pixel_values, output_attentions=True)
    assert len(with_attentions.attentions) == layers
    as_tuple = model.get_image_features(pixel_values, return_dict=False)
    assert isinstance(as_tuple, tuple)
    torch.testing.assert_close(as_tuple[0], with_states.last_hidden_state)


@torch.no_grad()
def test_forward_outputs_carry_image_outputs_with_image_hidden_states_as_alias(tiny):
    model, processor = tiny
    inputs = image_prompt(processor)
    for module in (model, model.model):
        outputs = module(**inputs)
        assert isinstance(outputs.image_outputs, BaseModelOutputWithPooling)
        assert outputs.image_hidden_states is outputs.image_outputs.pooler_output
    assert model(**prompt_inputs(processor, ["no image"])).image_outputs is None


# --- inputs_embeds -----------------------------------------------------------------------------------------------------


@torch.no_grad()
def test_inputs_embeds_with_pixel_values_equal_input_ids_with_pixel_values(tiny):
    model, processor = tiny
    inputs = image_prompt(processor, texts=["a <image> b <dream> c", "<image> d"], padding=True)
    inputs_embeds = model.get_input_embeddings()(inputs.input_ids)
    from_ids = model(**inputs)
    from_embeds = model(
        inputs_embeds=inputs_embeds, pixel_values=inputs.pixel_values, attention_mask=inputs.attention_mask
    )
    torch.testing.assert_close(from_embeds.logits, from_ids.logits, rtol=0, atol=0)
    torch.testing.assert_close(from_embeds.dream_conditions, from_ids.dream_conditions, rtol=0, atol=0)


def test_inputs_embeds_with_the_wrong_number_of_images_is_an_error(tiny):
    model, processor = tiny
    inputs = image_prompt(processor)
    inputs_embeds = model.get_input_embeddings()(inputs.input_ids)
    with pytest.raises(ValueError, match="1 image block.* but 2 image"):
        model(inputs_embeds=inputs_embeds, pixel_values=inputs.pixel_values.repeat(2, 1, 1, 1))


# --- loss --------------------------------------------------------------------------------------------------------------


@torch.no_grad()
def test_loss_honours_shift_labels_and_num_items_in_batch(tiny):
    model, processor = tiny
    inputs = image_prompt(processor)
    labels = inputs.input_ids.masked_fill(inputs.input_ids == model.config.image_patch_token_id, -100)
    shift_labels = torch.nn.functional.pad(labels, (0, 1), value=-100)[:, 1:]
    loss = model(**inputs, labels=labels).loss
    torch.testing.assert_close(model(**inputs, shift_labels=shift_labels).loss, loss)
    num_targets = int((shift_labels != -100).sum())
    summed = model(**inputs, labels=labels, num_items_in_batch=1).loss
    torch.testing.assert_close(summed, loss * num_targets)
    halved = model(**inputs, labels=labels, num_items_in_batch=2 * num_targets).loss
    torch.testing.assert_close(halved, loss / 2)


# --- declarations ------------------------------------------------------------------------------------------------------


def test_tied_lm_head_has_the_tensor_parallel_plan_llava_declares(tiny):
    model, _ = tiny
    assert model._tp_plan["lm_head"] == "colwise_gather_output"
    assert model._tp_plan["model.language_model.embed_tokens"] == "embedding_rowwise"


@pytest.mark.skipif(CACHE_ARGUMENT != "cache", reason="transformers before 5.24 still names the cache past_key_values")
@torch.no_grad()
def test_old_cache_argument_name_warns_as_transformers_models_do(tiny):
    model, processor = tiny
    inputs = prompt_inputs(processor, ["some text"])
    with pytest.warns(FutureWarning, match="past_key_values"):
        outputs = model(**inputs, past_key_values=DynamicCache(config=model.config.text_config), use_cache=True)
    assert outputs.cache.get_seq_length() == inputs.input_ids.shape[1]
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        model(**inputs, cache=DynamicCache(config=model.config.text_config), use_cache=True)


def test_config_from_a_dict_without_special_token_ids_fits_the_vocabulary():
    text_config = {"model_type": "llama", "vocab_size": 120, "hidden_size": 16, "num_hidden_layers": 1,
                   "num_attention_heads": 2, "intermediate_size": 32}
    config = DreamLLMConfig.from_dict({"text_config": text_config, "image_patch_token_id": 5})
    ids = config.special_token_ids
    assert ids["image_patch_token_id"] == 5
    assert ids["pad_token_id"] == 112 and ids["dream_token_id"] == 119
    assert all(token_id < 120 for token_id in ids.values())
    assert DreamLLMConfig.from_dict(config.to_dict()).special_token_ids == ids


# --- resize_token_embeddings -------------------------------------------------------------------------------------------


def test_resize_token_embeddings_that_would_drop_special_tokens_raises_naming_them(tiny):
    model, _ = tiny
    vocab_size = model.config.text_config.vocab_size
    highest = max(model.config.special_token_ids.items(), key=lambda item: item[1])
    with pytest.raises(ValueError, match=rf"{highest[0]}.*at least {highest[1] + 1} tokens"):
        model.resize_token_embeddings(highest[1])
    assert model.get_input_embeddings().num_embeddings == vocab_size
    model.resize_token_embeddings(vocab_size + 8)
    assert model.get_input_embeddings().num_embeddings == vocab_size + 8


# --- attention implementations -----------------------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("padding_side", ["left", "right"])
@torch.no_grad()
def test_eager_and_sdpa_give_the_same_logits_on_inputs_with_images(tiny, dtype, padding_side):
    model, processor = tiny
    model = model.to(dtype)
    processor.tokenizer.padding_side = padding_side
    inputs = image_prompt(processor, texts=["a <image> b <dream> c d e", "<image> f"], padding=True)
    real = inputs.attention_mask.bool()
    model.set_attn_implementation("sdpa")
    sdpa = model(**inputs).logits[real]
    model.set_attn_implementation("eager")
    eager = model(**inputs).logits[real]
    tolerance = 1e-5 if dtype == torch.float32 else 3e-2
    torch.testing.assert_close(eager.float(), sdpa.float(), rtol=tolerance, atol=tolerance)
