"""The model reproduces the original implementation's outputs on the official-tiny fixture (float32, eager)."""

import json

import pytest
import torch
from safetensors.torch import load_file
from transformers import CLIPVisionConfig

from dreamllm import DreamLLMConfig, DreamLLMForCausalLM

LLAMA_FIELDS = (
    "vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
    "num_key_value_heads", "hidden_act", "max_position_embeddings", "initializer_range", "rms_norm_eps",
    "bos_token_id", "eos_token_id", "pad_token_id", "rope_theta", "attention_bias", "tie_word_embeddings",
)
TOKEN_FIELDS = {
    "image_token_id": "<image>", "image_patch_token_id": "<im_patch>", "image_start_token_id": "<im_start>",
    "image_end_token_id": "<im_end>", "dream_token_id": "<dream>", "dream_start_token_id": "<dream_start>",
    "dream_end_token_id": "<dream_end>",
}
ATOL = 1e-4


def load_by_hand(root):
    """Builds the model from the original files with the key names mapped by hand (the converter does it for real)."""
    checkpoint = root / "checkpoint"
    original = json.loads((checkpoint / "config.json").read_text())
    token_ids = original["special_tokens2ids_dict"]
    config = DreamLLMConfig(
        text_config={field: original[field] for field in LLAMA_FIELDS},
        vision_config=CLIPVisionConfig.from_pretrained(root / "upstream" / "clip-vit-tiny").to_dict(),
        num_dream_queries=original["plugins_init_kwargs"]["dream_embedding"]["num_dream_queries"],
        condition_dim=32,
        pad_token_id=token_ids["[PAD]"],
        **{field: token_ids["additional_special_tokens"][token] for field, token in TOKEN_FIELDS.items()},
    )
    config._attn_implementation = "eager"
    model = DreamLLMForCausalLM(config).eval()
    state_dict = {
        key.replace("model.", "model.language_model.", 1) if key.startswith("model.") else key: value
        for key, value in load_file(checkpoint / "model.safetensors").items()
        if not key.endswith("rotary_emb.inv_freq")
    }
    clip_plugin = torch.load(checkpoint / "clip_vision_embedding.bin", weights_only=True)
    for key, value in clip_plugin.items():
        key = key.replace("clip_vision_model.vision_model.", "model.vision_tower.")
        state_dict[key.replace("projector.projector.", "model.vision_projector.")] = value
    dream_plugin = torch.load(checkpoint / "dream_embedding.bin", weights_only=True)
    state_dict["model.dream_queries.weight"] = dream_plugin["dream_queries"][0]
    head_plugin = torch.load(checkpoint / "stable_diffusion_head.bin", weights_only=True)
    state_dict["model.dream_projector.weight"] = head_plugin["projector.projector.weight"]
    model.load_state_dict(state_dict, strict=True)
    return model


@pytest.fixture(scope="module")
def model(official_tiny):
    return load_by_hand(official_tiny)


@pytest.fixture(scope="module")
def golden(official_tiny):
    root = official_tiny / "golden"
    meta = json.loads((root / "meta.json").read_text())
    return lambda name: load_file(root / f"{name}.safetensors"), meta


def max_diff(actual, expected):
    return (actual - expected).abs().max().item()


@torch.no_grad()
def test_text_only_logits_and_hidden_states(model, golden):
    tensors = golden[0]("text_forward")
    outputs = model(input_ids=tensors["input_ids"], output_hidden_states=True)
    assert max_diff(outputs.logits, tensors["logits"]) <= ATOL
    for index, hidden in enumerate(outputs.hidden_states):
        assert max_diff(hidden, tensors[f"hidden_states.{index}"]) <= ATOL
    assert outputs.logits.argmax(-1)[0].tolist() == golden[1]["text_forward"]["argmax"]


@torch.no_grad()
def test_clip_embeddings(model, golden):
    tensors = golden[0]("clip")
    assert max_diff(model.get_image_features(tensors["pixel_values"]), tensors["image_embeds"]) <= ATOL


@torch.no_grad()
def test_multimodal_logits_single_row(model, golden):
    tensors = golden[0]("mm_forward")
    embeds, _, _ = model.model.embed_multimodal_inputs(tensors["input_ids"], tensors["pixel_values"])
    assert max_diff(embeds, tensors["inputs_embeds"]) <= ATOL
    outputs = model(input_ids=tensors["input_ids"], pixel_values=tensors["pixel_values"])
    assert max_diff(outputs.logits, tensors["logits"]) <= ATOL


@torch.no_grad()
def test_multimodal_logits_right_padded_batch(model, golden):
    tensors = golden[0]("mm_forward")
    mask = tensors["batch.attention_mask"]
    outputs = model(
        input_ids=tensors["batch.input_ids"], attention_mask=mask, pixel_values=tensors["batch.pixel_values"],
        output_hidden_states=True,
    )
    last_tokens = mask.sum(1) - 1
    assert max_diff(outputs.logits[torch.arange(2), last_tokens], tensors["batch.logits_at_last_token"]) <= ATOL
    real = mask.bool()
    assert max_diff(outputs.hidden_states[-1][real], tensors["batch.last_hidden_state"][real]) <= ATOL


@torch.no_grad()
@pytest.mark.parametrize("case", ["p1", "p2", "uncond", "negative"])
def test_dream_conditions_of_prompts(model, golden, case):
    tensors, meta = golden[0]("t2i_condition"), golden[1]["t2i_condition"]
    conditions = model.get_dream_conditions(torch.tensor(meta[case]["input_ids"]))
    assert max_diff(conditions, tensors[f"{case}.projected"]) <= ATOL


@torch.no_grad()
def test_unconditional_condition_is_the_empty_prompt(model, golden):
    tensors = golden[0]("t2i_condition")
    assert max_diff(model.get_unconditional_dream_conditions(), tensors["uncond.projected"]) <= ATOL


@torch.no_grad()
@pytest.mark.parametrize("padding", ["batch_left", "batch_right"])
def test_batched_dream_conditions_equal_single_prompts(model, golden, padding):
    """The original drifts on the short right-padded row (positions ignore padding); we match the single prompt."""
    tensors, meta = golden[0]("t2i_condition"), golden[1]["t2i_condition"]
    conditions = model.get_dream_conditions(
        torch.tensor(meta[padding]["input_ids"]), torch.tensor(meta[padding]["attention_mask"])
    )
    assert max_diff(conditions[0], tensors["p1.projected"][0]) <= ATOL
    assert max_diff(conditions[1], tensors["p2.projected"][0]) <= ATOL
    assert max_diff(conditions[1], tensors[f"{padding}.projected"][1]) <= ATOL
    if padding == "batch_left":
        assert max_diff(conditions[0], tensors["batch_left.projected"][0]) <= ATOL
    else:
        assert max_diff(tensors["batch_right.projected"][0], tensors["p1.projected"][0]) > 0.1


@torch.no_grad()
def test_greedy_generation_ids_and_scores(model, golden):
    tensors, meta = golden[0]("generate"), golden[1]["generate"]
    outputs = model.generate(
        input_ids=tensors["input_ids"], pixel_values=tensors["pixel_values"], max_new_tokens=16, do_sample=False,
        output_scores=True, return_dict_in_generate=True,
    )
    assert torch.equal(outputs.sequences, tensors["output_ids"])
    assert outputs.sequences[0, tensors["input_ids"].shape[1]:].tolist() == meta["new_tokens"]
    assert max_diff(torch.stack(outputs.scores, dim=1)[0], tensors["step_scores"]) <= ATOL
