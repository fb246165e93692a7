"""The model reproduces the original implementation's outputs on the official-tiny fixture (float32, eager)."""

import json

import pytest
import torch
from official_tiny import load_official_tiny_pipeline
from safetensors.torch import load_file

ATOL = 1e-4


@pytest.fixture(scope="module")
def model(official_tiny):
    return load_official_tiny_pipeline(official_tiny).model


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
    assert max_diff(model.get_image_features(tensors["pixel_values"]).pooler_output, tensors["image_embeds"]) <= ATOL


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
        output_logits=True, return_dict_in_generate=True,
    )
    assert torch.equal(outputs.sequences, tensors["output_ids"])
    assert outputs.sequences[0, tensors["input_ids"].shape[1]:].tolist() == meta["new_tokens"]
    # the original's step scores are the raw logits (the converted generation config suppresses pipeline-only tokens)
    assert max_diff(torch.stack(outputs.logits, dim=1)[0], tensors["step_scores"]) <= ATOL
