"""The transformers model contract, as Llava keeps it: image features, embeddings with images, assisted decoding, loss
arguments, tensor-parallel plan, cache argument, config defaults, attention backends, resizing and plain generate."""

import logging
import warnings

import pytest
import torch
from PIL import Image
from transformers import LogitsProcessor, LogitsProcessorList
from transformers.modeling_outputs import BaseModelOutputWithPooling

from dreamllm import DreamLLMConfig, DreamLLMForCausalLM
from dreamllm.modeling_dreamllm.modeling_dreamllm import CACHE_ARGUMENT
from dreamllm.testing import tiny_model_and_processor


def random_images(count, seed=0, size=24):
    generator = torch.Generator().manual_seed(seed)
    pixels = torch.randint(0, 256, (count, size, size, 3), generator=generator, dtype=torch.uint8)
    return [Image.fromarray(array.numpy()) for array in pixels]


@pytest.fixture(scope="module")
def model_and_processor():
    model, processor = tiny_model_and_processor(seed=0)
    return model.eval(), processor


@pytest.fixture(scope="module")
def image_prompt(model_and_processor):
    _, processor = model_and_processor
    return processor(text=["<image> What is in the picture?"], images=random_images(1), return_tensors="pt")


def pipeline_only_token_ids(config):
    return {
        config.pad_token_id,
        config.image_token_id,
        config.image_patch_token_id,
        config.image_start_token_id,
        config.image_end_token_id,
        config.dream_token_id,
        config.dream_end_token_id,
    }


# --- 1. image features ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("owner", ["model", "for_causal_lm"])
def test_get_image_features_returns_the_vision_output_with_projected_pooler_output(model_and_processor, image_prompt, owner):
    model, _ = model_and_processor
    owner = model.model if owner == "model" else model
    pixel_values = image_prompt.pixel_values
    with torch.no_grad():
        output = owner.get_image_features(pixel_values)
        penultimate = model.model.vision_tower(pixel_values, output_hidden_states=True).hidden_states[-2][:, 1:]
    assert isinstance(output, BaseModelOutputWithPooling)
    torch.testing.assert_close(output.pooler_output, model.model.vision_projector(penultimate), rtol=0, atol=0)
    assert output.hidden_states is None and output.attentions is None


def test_get_image_features_honours_return_dict_and_output_flags(image_prompt):
    model, _ = tiny_model_and_processor(seed=0)
    model.set_attn_implementation("eager")
    pixel_values = image_prompt.pixel_values
    vision_config = model.config.vision_config
    with torch.no_grad():
        full = model.get_image_features(pixel_values, output_hidden_states=True, output_attentions=True)
        as_tuple = model.get_image_features(pixel_values, return_dict=False)
    assert len(full.hidden_states) == vision_config.num_hidden_layers + 1
    assert len(full.attentions) == vision_config.num_hidden_layers
    assert isinstance(as_tuple, tuple)
    torch.testing.assert_close(as_tuple[1], full.pooler_output)


def test_forward_outputs_carry_image_outputs_with_image_hidden_states_as_alias(model_and_processor, image_prompt):
    model, _ = model_and_processor
    with torch.no_grad():
        outputs = model(**image_prompt)
        features = model.get_image_features(image_prompt.pixel_values).pooler_output
    assert isinstance(outputs.image_outputs, BaseModelOutputWithPooling)
    torch.testing.assert_close(outputs.image_outputs.pooler_output, features)
    assert outputs.image_hidden_states is outputs.image_outputs.pooler_output
    assert model(input_ids=image_prompt.input_ids[:, :1]).image_hidden_states is None


# --- 2. inputs_embeds with pixel_values ------------------------------------------------------------------------------


def test_inputs_embeds_with_pixel_values_equal_input_ids(model_and_processor):
    model, processor = model_and_processor
    inputs = processor(text=["<image> one <dream> two"], images=random_images(1), return_tensors="pt")
    embeds = model.get_input_embeddings()(inputs.input_ids)
    with torch.no_grad():
        from_ids = model(**inputs)
        from_embeds = model(inputs_embeds=embeds, pixel_values=inputs.pixel_values, attention_mask=inputs.attention_mask)
    torch.testing.assert_close(from_embeds.logits, from_ids.logits)
    torch.testing.assert_close(from_embeds.dream_conditions, from_ids.dream_conditions)


@pytest.mark.parametrize("num_beams", [1, 2])
def test_generate_from_inputs_embeds_with_images_equals_generate_from_ids(model_and_processor, num_beams):
    model, processor = model_and_processor
    inputs = processor(
        text=["<image> What is it?", "<image> and <image> compared"], images=random_images(3), return_tensors="pt",
        padding=True,
    )
    embeds = model.get_input_embeddings()(inputs.input_ids)
    settings = {"max_new_tokens": 6, "do_sample": False, "num_beams": num_beams}
    from_ids = model.generate(**inputs, **settings)
    from_embeds = model.generate(
        inputs_embeds=embeds, pixel_values=inputs.pixel_values, attention_mask=inputs.attention_mask, **settings
    )
    assert torch.equal(from_embeds, from_ids[:, inputs.input_ids.shape[1] :])


def test_pixel_values_without_their_blocks_in_the_embeddings_are_refused(model_and_processor, image_prompt):
    model, _ = model_and_processor
    embeds = model.get_input_embeddings()(torch.tensor([[1, 5, 6]]))
    with pytest.raises(ValueError, match="0 image block"):
        model(inputs_embeds=embeds, pixel_values=image_prompt.pixel_values)


# --- 3. assisted and prompt-lookup decoding ---------------------------------------------------------------------------


def test_assisted_decoding_with_images_equals_greedy(model_and_processor, image_prompt):
    model, _ = model_and_processor
    assistant, _ = tiny_model_and_processor(seed=1)
    greedy = model.generate(**image_prompt, max_new_tokens=8, do_sample=False)
    assisted = model.generate(**image_prompt, max_new_tokens=8, do_sample=False, assistant_model=assistant.eval())
    assert torch.equal(assisted, greedy)


def test_prompt_lookup_decoding_with_images_equals_greedy(model_and_processor, image_prompt):
    model, _ = model_and_processor
    greedy = model.generate(**image_prompt, max_new_tokens=8, do_sample=False)
    lookup = model.generate(**image_prompt, max_new_tokens=8, do_sample=False, prompt_lookup_num_tokens=3)
    assert torch.equal(lookup, greedy)


# --- 4. loss arguments -----------------------------------------------------------------------------------------------


def test_loss_takes_pre_shifted_labels_and_num_items_in_batch(model_and_processor):
    model, processor = model_and_processor
    inputs = processor(text=["a long enough sentence to score", "short"], return_tensors="pt", padding=True)
    labels = inputs.input_ids.masked_fill(inputs.attention_mask == 0, -100)
    shift_labels = torch.nn.functional.pad(labels[:, 1:], (0, 1), value=-100)
    with torch.no_grad():
        from_labels = model(**inputs, labels=labels).loss
        from_shift_labels = model(**inputs, shift_labels=shift_labels).loss
        summed = model(**inputs, labels=labels, num_items_in_batch=1).loss
    num_targets = int((labels[:, 1:] != -100).sum())
    torch.testing.assert_close(from_shift_labels, from_labels)
    torch.testing.assert_close(summed, from_labels * num_targets)


def test_loss_takes_shift_labels_that_are_a_slice_of_a_larger_tensor(model_and_processor):
    model, processor = model_and_processor
    inputs = processor(text=["a long enough sentence to score", "another one of equal size"], return_tensors="pt",
                       padding=True)
    labels = inputs.input_ids.masked_fill(inputs.attention_mask == 0, -100)
    padded = torch.nn.functional.pad(labels, (0, 1), value=-100)
    shift_labels = padded[:, 1:]  # a view that is not contiguous, as slicing a sequence-parallel shard gives
    assert not shift_labels.is_contiguous()
    with torch.no_grad():
        torch.testing.assert_close(model(**inputs, shift_labels=shift_labels).loss, model(**inputs, labels=labels).loss)


# --- 5.-7. declarations ----------------------------------------------------------------------------------------------


def test_lm_head_has_a_tensor_parallel_plan():
    assert DreamLLMForCausalLM._tp_plan == {"lm_head": "colwise_gather_output"}


def test_the_old_cache_argument_name_warns_as_transformers_models_do(model_and_processor, image_prompt):
    model, _ = model_and_processor
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with torch.no_grad():
            outputs = model(**image_prompt, past_key_values=None, use_cache=True)
    old_name_warnings = [w for w in caught if issubclass(w.category, FutureWarning) and "past_key_values" in str(w.message)]
    # transformers 5.24 renamed the cache to `cache` and warns on the old name; 5.23 still calls it past_key_values
    assert len(old_name_warnings) == (1 if CACHE_ARGUMENT == "cache" else 0)
    assert outputs[CACHE_ARGUMENT] is not None


def test_a_config_without_token_ids_numbers_them_inside_its_vocabulary():
    config = DreamLLMConfig.from_dict(
        {
            "text_config": {"model_type": "llama", "vocab_size": 100, "hidden_size": 16, "num_hidden_layers": 1,
                            "num_attention_heads": 2, "intermediate_size": 32},
            "vision_config": {"model_type": "clip_vision_model", "hidden_size": 16, "num_hidden_layers": 1,
                              "num_attention_heads": 2, "intermediate_size": 32, "image_size": 16, "patch_size": 8},
        }
    )
    assert sorted(config.special_token_ids.values()) == list(range(92, 100))
    assert (config.pad_token_id, config.image_start_token_id, config.dream_token_id) == (92, 93, 99)


def test_output_attentions_reaches_the_language_model(image_prompt):
    model, _ = tiny_model_and_processor(seed=0)
    model.set_attn_implementation("eager")
    with torch.no_grad():
        outputs = model(**image_prompt, output_attentions=True, output_hidden_states=True)
    text_config = model.config.text_config
    assert len(outputs.attentions) == text_config.num_hidden_layers
    assert len(outputs.hidden_states) == text_config.num_hidden_layers + 1
    assert len(outputs.image_outputs.attentions) == model.config.vision_config.num_hidden_layers


# --- 8. attention backends -------------------------------------------------------------------------------------------


@pytest.mark.parametrize("padding_side", ["left", "right"])
@pytest.mark.parametrize("dtype, tolerance", [(torch.float32, 1e-5), (torch.bfloat16, 3e-2)])
def test_eager_and_sdpa_give_the_same_logits_on_inputs_with_images(padding_side, dtype, tolerance):
    model, processor = tiny_model_and_processor(seed=0)
    model = model.to(dtype).eval()
    processor.tokenizer.padding_side = padding_side
    inputs = processor(
        text=["<image> a picture", "<image> and a much longer caption <image> here"], images=random_images(3),
        return_tensors="pt", padding=True,
    )
    inputs["pixel_values"] = inputs.pixel_values.to(dtype)
    real = inputs.attention_mask.bool()
    logits = {}
    for implementation in ("eager", "sdpa"):
        model.set_attn_implementation(implementation)
        with torch.no_grad():
            logits[implementation] = model(**inputs).logits.float()[real]
    torch.testing.assert_close(logits["sdpa"], logits["eager"], rtol=tolerance, atol=tolerance)


# --- 9. resizing -----------------------------------------------------------------------------------------------------


def test_resizing_embeddings_below_the_special_tokens_names_them():
    model, _ = tiny_model_and_processor(seed=0)
    vocab_size = model.config.text_config.vocab_size
    with pytest.raises(ValueError, match="dream_token_id"):
        model.resize_token_embeddings(vocab_size - 1)
    assert model.get_input_embeddings().weight.shape[0] == vocab_size
    assert model.resize_token_embeddings(vocab_size + 3).weight.shape[0] == vocab_size + 3


# --- 10. plain generate cannot draw ----------------------------------------------------------------------------------


class Favour(LogitsProcessor):
    """Makes `token_ids` the most likely tokens (as a model that wants to draw or write a block would)."""

    def __init__(self, token_ids):
        self.token_ids = sorted(token_ids)

    def __call__(self, input_ids, scores):
        scores[:, self.token_ids] += 1000.0
        return scores


def test_plain_generate_never_samples_tokens_only_the_pipeline_writes(model_and_processor, image_prompt):
    model, _ = model_and_processor
    forbidden = pipeline_only_token_ids(model.config)
    for do_sample in (False, True):
        output = model.generate(
            **image_prompt, max_new_tokens=12, do_sample=do_sample,
            logits_processor=LogitsProcessorList([Favour(forbidden)]),
        )
        new_tokens = set(output[0, image_prompt.input_ids.shape[1] :].tolist())
        assert not new_tokens & forbidden


def test_plain_generate_stops_at_dream_start_and_names_the_pipeline(model_and_processor, image_prompt, caplog):
    model, _ = model_and_processor
    dream_start = model.config.dream_start_token_id
    with caplog.at_level(logging.WARNING, logger="dreamllm.modeling_dreamllm.modeling_dreamllm"):
        output = model.generate(
            **image_prompt, max_new_tokens=20, do_sample=False, logits_processor=LogitsProcessorList([Favour([dream_start])])
        )
    assert output[0, image_prompt.input_ids.shape[1] :].tolist() == [dream_start]
    assert "DreamLLMPipeline" in caplog.text


def test_the_saved_generation_config_carries_the_plain_generate_rules(model_and_processor, tmp_path):
    model, _ = model_and_processor
    model.save_pretrained(tmp_path)
    reloaded = DreamLLMForCausalLM.from_pretrained(tmp_path)
    config = reloaded.generation_config
    assert set(config.suppress_tokens) >= pipeline_only_token_ids(model.config)
    assert model.config.dream_start_token_id in config.eos_token_id


def test_the_pipeline_still_draws_where_plain_generate_stops():
    from dreamllm.testing import tiny_pipeline

    pipe = tiny_pipeline(seed=0)
    dream_start = pipe.model.config.dream_start_token_id
    document = pipe(
        "Draw", max_new_tokens=3, num_inference_steps=1, max_images=1, height=16, width=16,
        logits_processor=LogitsProcessorList([Favour([dream_start])]), generator=torch.Generator().manual_seed(0),
    )
    assert len(document.images) == 1
