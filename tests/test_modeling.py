import pytest
import torch
from accelerate import infer_auto_device_map
from PIL import Image
from transformers import CLIPVisionModel, LlamaForCausalLM

from dreamllm import DreamLLMConfig
from dreamllm.modeling_dreamllm.modeling_dreamllm import CACHE_ARGUMENT, repeat_images_per_row


def random_images(count, seed=0, size=24):
    generator = torch.Generator().manual_seed(seed)
    pixels = torch.randint(0, 256, (count, size, size, 3), generator=generator, dtype=torch.uint8)
    return [Image.fromarray(array.numpy()) for array in pixels]


def prompt_inputs(processor, texts, images=None, **kwargs):
    return processor(text=texts, images=images, return_tensors="pt", **kwargs)


# --- configuration -------------------------------------------------------------------------------------------------


def test_config_defaults_describe_the_released_7b_model():
    config = DreamLLMConfig()
    text, vision = config.text_config, config.vision_config
    assert (text.model_type, text.vocab_size, text.hidden_size, text.intermediate_size) == ("llama", 32008, 4096, 11008)
    assert (text.num_hidden_layers, text.num_attention_heads, text.max_position_embeddings) == (32, 32, 2048)
    assert text.rms_norm_eps == 1e-6
    assert (vision.model_type, vision.hidden_size, vision.num_hidden_layers) == ("clip_vision_model", 1024, 24)
    assert (vision.image_size, vision.patch_size, vision.hidden_act) == (224, 14, "quick_gelu")
    assert config.num_image_tokens == 256
    assert (config.num_dream_queries, config.condition_dim, config.vision_feature_layer) == (64, 1024, -2)
    assert (config.loss_weight_lm, config.loss_weight_diffusion) == (1.0, 10.0)
    assert sorted(config.special_token_ids.values()) == list(range(32000, 32008))


def test_config_round_trips_through_a_dict(tiny):
    config = tiny[0].config
    restored = DreamLLMConfig.from_dict(config.to_dict())
    assert restored.to_dict() == config.to_dict()
    assert restored.text_config.hidden_size == 32 and restored.vision_config.patch_size == 4


@pytest.mark.parametrize(
    "overrides, message",
    [
        ({"vision_feature_layer": 30}, "vision_feature_layer=30"),
        ({"image_token_id": 32001}, "distinct ids"),
        ({"dream_end_token_id": 40000}, "outside the vocabulary"),
        ({"num_dream_queries": 0}, "num_dream_queries"),
    ],
)
def test_config_rejects_inconsistent_fields(overrides, message):
    with pytest.raises(ValueError, match=message):
        DreamLLMConfig(**overrides)


# --- the two halves against the transformers reference classes -------------------------------------------------------


def test_language_part_matches_llama_for_causal_lm_with_the_same_weights(tiny):
    model, processor = tiny
    llama = LlamaForCausalLM(model.config.text_config).eval()
    llama.model.load_state_dict(model.model.language_model.state_dict())
    llama.lm_head.load_state_dict(model.lm_head.state_dict())
    inputs = prompt_inputs(processor, ["A cat sat on the mat.", "Hi"])
    position_ids = (inputs.attention_mask.cumsum(-1) - 1).clamp(min=0)
    with torch.no_grad():
        ours = model(**inputs, position_ids=position_ids, output_hidden_states=True)
        reference = llama(**inputs, position_ids=position_ids, output_hidden_states=True)
    mask = inputs.attention_mask.bool()
    assert torch.equal(ours.logits[mask], reference.logits[mask])
    assert len(ours.hidden_states) == len(reference.hidden_states) == 3
    generated = model.generate(**inputs, max_new_tokens=6, do_sample=False)
    assert torch.equal(generated, llama.generate(**inputs, max_new_tokens=6, do_sample=False))


def test_image_features_are_the_penultimate_clip_layer_without_cls_projected(tiny):
    model, processor = tiny
    clip = CLIPVisionModel(model.config.vision_config).eval()
    clip.load_state_dict(model.model.vision_tower.state_dict())
    pixel_values = processor.image_processor(random_images(2), return_tensors="pt").pixel_values
    with torch.no_grad():
        penultimate = clip(pixel_values, output_hidden_states=True).hidden_states[-2][:, 1:]
        expected = model.model.vision_projector(penultimate)
        features = model.get_image_features(pixel_values).pooler_output
    assert features.shape == (2, model.config.num_image_tokens, model.config.text_config.hidden_size)
    torch.testing.assert_close(features, expected, rtol=0, atol=0)


# --- block placement -------------------------------------------------------------------------------------------------


def test_image_features_and_dream_queries_replace_only_their_patch_positions(tiny):
    model, processor = tiny
    config = model.config
    images = random_images(2)
    inputs = prompt_inputs(processor, ["one <image> two <dream> three <image> four"], images)
    ids = inputs.input_ids[0]
    with torch.no_grad():
        embeds, layout, image_outputs = model.model.embed_multimodal_inputs(inputs.input_ids, inputs.pixel_values)
        features = image_outputs.pooler_output
        token_embeds = model.get_input_embeddings()(inputs.input_ids)[0]
    image_starts = (ids == config.image_start_token_id).nonzero().flatten().tolist()
    dream_start = (ids == config.dream_start_token_id).nonzero().item()
    n, q = config.num_image_tokens, config.num_dream_queries
    for image_index, start in enumerate(image_starts):
        assert torch.equal(embeds[0, start + 1 : start + 1 + n], features[image_index])
    assert torch.equal(embeds[0, dream_start + 1 : dream_start + 1 + q], model.model.dream_queries.weight)
    replaced = layout.image_patch_mask[0] | layout.dream_patch_mask[0]
    assert int(replaced.sum()) == 2 * n + q
    assert torch.equal(embeds[0, ~replaced], token_embeds[~replaced])
    assert layout.num_image_blocks == 2 and layout.num_dream_blocks == 1


def test_patch_tokens_outside_a_block_keep_their_token_embedding(tiny):
    model, processor = tiny
    patch_id = model.config.image_patch_token_id
    text_ids = prompt_inputs(processor, ["text end"]).input_ids  # the processor refuses typed block tokens
    input_ids = torch.cat([text_ids[:, :2], torch.tensor([[patch_id, patch_id]]), text_ids[:, 2:]], dim=1)
    with torch.no_grad():
        embeds, layout, _ = model.model.embed_multimodal_inputs(input_ids)
    assert not layout.image_patch_mask.any() and not layout.dream_patch_mask.any()
    assert torch.equal(embeds, model.get_input_embeddings()(input_ids))


def test_wrong_number_of_images_names_both_counts(tiny):
    model, processor = tiny
    inputs = prompt_inputs(processor, ["look <image> and <image>"], random_images(2))
    with pytest.raises(ValueError, match=r"2 image block\(s\) but 1 image\(s\)"):
        model(input_ids=inputs.input_ids, pixel_values=inputs.pixel_values[:1])
    with pytest.raises(ValueError, match=r"2 image block\(s\) but 0 image\(s\)"):
        model(input_ids=inputs.input_ids)


def test_incomplete_blocks_are_rejected(tiny):
    model, processor = tiny
    inputs = prompt_inputs(processor, ["draw <dream>"])
    truncated = inputs.input_ids[:, :-3]
    with pytest.raises(ValueError, match=r"1 dream block\(s\) with 2 <im_patch> positions"):
        model(input_ids=truncated)


# --- outputs ---------------------------------------------------------------------------------------------------------


def test_dream_conditions_project_the_final_norm_states_at_the_query_positions(tiny):
    model, processor = tiny
    inputs = prompt_inputs(processor, ["a <dream> and <dream>", "only <dream> here"])
    with torch.no_grad():
        outputs = model(**inputs, output_hidden_states=True)
    q = model.config.num_dream_queries
    assert outputs.dream_conditions.shape == (3, q, model.config.condition_dim)
    final_states = outputs.hidden_states[-1]
    starts = (inputs.input_ids == model.config.dream_start_token_id).nonzero().tolist()
    for block, (row, start) in enumerate(starts):
        expected = model.model.dream_projector(final_states[row, start + 1 : start + 1 + q])
        torch.testing.assert_close(outputs.dream_conditions[block], expected, rtol=0, atol=0)


def test_loss_is_the_mean_cross_entropy_over_unignored_labels(tiny):
    model, processor = tiny
    inputs = prompt_inputs(processor, ["the loss of a short text"])
    labels = inputs.input_ids.clone()
    labels[:, :3] = -100
    outputs = model(**inputs, labels=labels)
    expected = torch.nn.functional.cross_entropy(outputs.logits[0, :-1], labels[0, 1:], ignore_index=-100)
    torch.testing.assert_close(outputs.loss, expected)
    all_ignored = model(**inputs, labels=torch.full_like(labels, -100))
    assert all_ignored.loss.item() == 0.0


def test_cached_decoding_matches_a_full_forward(tiny):
    model, processor = tiny
    inputs = prompt_inputs(processor, ["picture <image> says"], random_images(1))
    with torch.no_grad():
        full = model(**inputs)
        prefix = model(input_ids=inputs.input_ids[:, :-2], pixel_values=inputs.pixel_values, use_cache=True)
        step = model(input_ids=inputs.input_ids[:, -2:], **{CACHE_ARGUMENT: prefix[CACHE_ARGUMENT]})
    torch.testing.assert_close(step.logits, full.logits[:, -2:], rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("padding_side", ["left", "right"])
def test_padded_rows_give_the_same_logits_as_single_rows(tiny, padding_side):
    model, processor = tiny
    texts = ["short <image>", "a much longer prompt with <image> and a <dream> inside"]
    images = random_images(2)
    batch = prompt_inputs(processor, texts, images, padding_side=padding_side)
    positions = (batch.attention_mask.cumsum(-1) - 1).clamp(min=0)
    with torch.no_grad():
        batched = model(**batch, position_ids=positions)
        for row, (text, image) in enumerate(zip(texts, images)):
            single = model(**prompt_inputs(processor, [text], [image]))
            mask = batch.attention_mask[row].bool()
            torch.testing.assert_close(batched.logits[row, mask], single.logits[0], rtol=1e-4, atol=1e-5)


# --- dream conditions for prompts ------------------------------------------------------------------------------------


def test_get_dream_conditions_runs_a_dream_block_after_the_prompt(tiny):
    model, processor = tiny
    prompt = prompt_inputs(processor, ["a red ball"])
    with_block = prompt_inputs(processor, ["a red ball<dream>"])
    dream_block = with_block.input_ids[:, prompt.input_ids.shape[1]:]
    with torch.no_grad():
        conditions = model.get_dream_conditions(prompt.input_ids)
        prompt_pass = model(input_ids=prompt.input_ids, use_cache=True)
        on_the_cache = model(input_ids=dream_block, cache=prompt_pass[CACHE_ARGUMENT]).dream_conditions
    torch.testing.assert_close(conditions, on_the_cache, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("padding_side", ["left", "right"])
def test_dream_conditions_of_a_padded_batch_equal_single_prompts(tiny, padding_side):
    model, processor = tiny
    prompts = ["a dog", "a very long prompt about a cat sitting on a warm red mat"]
    batch = prompt_inputs(processor, prompts, padding_side=padding_side)
    with torch.no_grad():
        batched = model.get_dream_conditions(batch.input_ids, batch.attention_mask)
        singles = torch.cat([model.get_dream_conditions(prompt_inputs(processor, [p]).input_ids) for p in prompts])
    torch.testing.assert_close(batched, singles, rtol=1e-5, atol=1e-5)


def test_unconditional_conditions_are_the_dream_block_after_bos_alone(tiny):
    model, processor = tiny
    empty = prompt_inputs(processor, [""]).input_ids
    assert empty.tolist() == [[processor.tokenizer.bos_token_id]]
    with torch.no_grad():
        unconditional = model.get_unconditional_dream_conditions(batch_size=3)
        expected = model.get_dream_conditions(empty)
    assert unconditional.shape == (3, model.config.num_dream_queries, model.config.condition_dim)
    assert torch.equal(unconditional[2], expected[0])


# --- generation ------------------------------------------------------------------------------------------------------


def test_generate_encodes_images_once_and_matches_uncached_greedy_decoding(tiny):
    model, processor = tiny
    inputs = prompt_inputs(processor, ["describe <image>"], random_images(1))
    vision_calls = []
    hook = model.model.vision_tower.register_forward_hook(lambda *args: vision_calls.append(1))
    cached = model.generate(**inputs, max_new_tokens=8, do_sample=False)
    hook.remove()
    assert len(vision_calls) == 1
    uncached = model.generate(**inputs, max_new_tokens=8, do_sample=False, use_cache=False)
    assert torch.equal(cached, uncached)


def test_sampling_is_reproducible_with_a_seed(tiny):
    model, processor = tiny
    inputs = prompt_inputs(processor, ["once upon a time"])
    torch.manual_seed(3)
    first = model.generate(**inputs, max_new_tokens=10, do_sample=True, top_p=0.9, temperature=1.5)
    torch.manual_seed(3)
    second = model.generate(**inputs, max_new_tokens=10, do_sample=True, top_p=0.9, temperature=1.5)
    assert torch.equal(first, second)


def test_beam_search_keeps_each_rows_images_together(tiny):
    model, processor = tiny
    texts = ["compare <image> with <image>", "look at <image>"]
    images = random_images(3)
    batch = prompt_inputs(processor, texts, images)
    beams = model.generate(**batch, max_new_tokens=5, num_beams=3, do_sample=False)
    row_images = [images[:2], images[2:]]
    for row, (text, own_images) in enumerate(zip(texts, row_images)):
        single_inputs = prompt_inputs(processor, [text], own_images)
        single = model.generate(**single_inputs, max_new_tokens=5, num_beams=3, do_sample=False)
        padding = batch.input_ids.shape[1] - single_inputs.input_ids.shape[1]
        assert torch.equal(beams[row, padding:], single[0])


def test_repeat_images_per_row_keeps_groups_in_row_order(tiny):
    model, processor = tiny
    batch = prompt_inputs(processor, ["<image><image>", "<image>"], random_images(3))
    layout = model.model.get_block_layout(batch.input_ids)
    tagged = torch.arange(3.0).view(3, 1)
    repeated = repeat_images_per_row(tagged, layout.image_patch_mask, model.config, repeats=2)
    assert repeated.flatten().tolist() == [0, 1, 0, 1, 2, 2]


# --- training features -----------------------------------------------------------------------------------------------


def test_gradient_checkpointing_gives_the_same_gradients(tiny):
    model, processor = tiny
    inputs = prompt_inputs(processor, ["learn <image> and <dream> well"], random_images(1))
    model.train()

    def gradients():
        model.zero_grad()
        outputs = model(**inputs, labels=inputs.input_ids)
        (outputs.loss + outputs.dream_conditions.square().mean()).backward()
        return {name: param.grad.clone() for name, param in model.named_parameters() if param.grad is not None}

    plain = gradients()
    model.gradient_checkpointing_enable()
    checkpointed = gradients()
    assert model.model.language_model.gradient_checkpointing
    assert plain.keys() == checkpointed.keys()
    assert "model.dream_queries.weight" in plain and "model.vision_projector.weight" in plain
    for name in plain:
        torch.testing.assert_close(checkpointed[name], plain[name], rtol=1e-4, atol=1e-6)


def test_no_split_modules_let_device_map_split_at_layers(tiny):
    model, _ = tiny
    assert {"LlamaDecoderLayer", "CLIPEncoderLayer"} <= set(model._no_split_modules)
    size = sum(param.numel() * param.element_size() for param in model.parameters())
    device_map = infer_auto_device_map(
        model, max_memory={0: size // 3, 1: size // 3, "cpu": 4 * size}, no_split_module_classes=model._no_split_modules
    )
    assert len(set(device_map.values())) == 3
    layer_keys = [key for key in device_map if ".layers." in key]
    assert layer_keys and all(key.rsplit(".", 1)[-1].isdigit() for key in layer_keys)
