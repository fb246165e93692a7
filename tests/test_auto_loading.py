"""A saved DreamLLM loads with the transformers Auto classes in a fresh process."""

import json
import subprocess
import sys
import textwrap

import pytest
import torch
from safetensors.torch import save_file
from transformers import AutoModelForCausalLM, AutoProcessor

from dreamllm import DreamLLMForCausalLM, DreamLLMProcessor

FRESH_PROCESS_CHECKS = textwrap.dedent(
    """
    import json, sys, torch
    from safetensors.torch import load_file
    import dreamllm
    from transformers import (AutoConfig, AutoModel, AutoModelForCausalLM, AutoModelForImageTextToText,
                              AutoProcessor)

    saved, reference_file = sys.argv[1], sys.argv[2]
    reference = load_file(reference_file)
    report = {"config": type(AutoConfig.from_pretrained(saved)).__name__,
              "processor": type(AutoProcessor.from_pretrained(saved)).__name__}

    def bit_exact(model, prefix=""):
        state = model.state_dict()
        return all(torch.equal(state[key[len(prefix):]], value) for key, value in reference.items()
                   if key.startswith(prefix))

    for auto_class in (AutoModelForCausalLM, AutoModelForImageTextToText):
        model = auto_class.from_pretrained(saved)
        report[auto_class.__name__] = [type(model).__name__, bit_exact(model)]
    base = AutoModel.from_pretrained(saved)
    report["AutoModel"] = [type(base).__name__, bit_exact(base, prefix="model.")]
    bf16 = AutoModelForCausalLM.from_pretrained(saved, dtype=torch.bfloat16, device_map="auto")
    report["bfloat16"] = [str(bf16.dtype), all(torch.equal(bf16.state_dict()[k], v.to(torch.bfloat16))
                                               for k, v in reference.items())]
    report["device_map"] = str(bf16.device)
    print(json.dumps(report))
    """
)


@pytest.fixture()
def saved_tiny(tiny, tmp_path):
    model, processor = tiny
    model.save_pretrained(tmp_path / "model")
    processor.save_pretrained(tmp_path / "model")
    return tmp_path / "model"


def test_save_writes_safetensors_only(saved_tiny):
    files = {path.name for path in saved_tiny.iterdir()}
    assert "model.safetensors" in files and "config.json" in files and "processor_config.json" in files
    assert not [name for name in files if name.endswith((".bin", ".pt", ".pth", ".pkl"))]


def test_only_the_main_process_writes_the_loader_files(tiny, tmp_path):
    """Processes that save with `is_main_process=False` (the non-writers of a distributed save) write nothing."""
    model, _ = tiny
    model.save_pretrained(tmp_path / "other-process", is_main_process=False)
    assert not (tmp_path / "other-process" / "dreamllm_loader.py").exists()
    assert not (tmp_path / "other-process" / "config.json").exists()
    model.save_pretrained(tmp_path / "main-process")
    config = json.loads((tmp_path / "main-process" / "config.json").read_text())
    assert (tmp_path / "main-process" / "dreamllm_loader.py").is_file() and "auto_map" in config


def test_auto_classes_load_bit_exactly_in_a_fresh_process(tiny, saved_tiny, tmp_path):
    reference_file = tmp_path / "reference.safetensors"
    save_file({key: value.contiguous() for key, value in tiny[0].state_dict().items()}, reference_file)
    result = subprocess.run(
        [sys.executable, "-c", FRESH_PROCESS_CHECKS, str(saved_tiny), str(reference_file)],
        capture_output=True, text=True, check=True,
    )
    report = json.loads(result.stdout.strip().splitlines()[-1])
    assert report["config"] == "DreamLLMConfig"
    assert report["processor"] == "DreamLLMProcessor"
    assert report["AutoModelForCausalLM"] == ["DreamLLMForCausalLM", True]
    assert report["AutoModelForImageTextToText"] == ["DreamLLMForCausalLM", True]
    assert report["AutoModel"] == ["DreamLLMModel", True]
    assert report["bfloat16"] == ["torch.bfloat16", True]
    assert report["device_map"] == "cpu"


@pytest.mark.parametrize("attn_implementation", ["eager", "sdpa"])
def test_attention_implementations_agree(tiny, saved_tiny, attn_implementation):
    model, processor = tiny
    loaded = AutoModelForCausalLM.from_pretrained(saved_tiny, attn_implementation=attn_implementation)
    assert loaded.config.text_config._attn_implementation == attn_implementation
    assert loaded.config.vision_config._attn_implementation == attn_implementation
    image = torch.randint(0, 256, (20, 20, 3), dtype=torch.uint8).numpy()
    inputs = processor(text=["a <image> and a <dream>", "b"], images=[image], return_tensors="pt")
    with torch.no_grad():
        expected = model(**inputs)
        actual = loaded(**inputs)
    mask = inputs.attention_mask.bool()
    torch.testing.assert_close(actual.logits[mask], expected.logits[mask], rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(actual.dream_conditions, expected.dream_conditions, rtol=1e-4, atol=1e-5)


def test_processor_round_trips_through_auto_processor(tiny, saved_tiny):
    _, processor = tiny
    loaded = AutoProcessor.from_pretrained(saved_tiny)
    assert isinstance(loaded, DreamLLMProcessor)
    assert (loaded.num_image_tokens, loaded.num_dream_queries) == (processor.num_image_tokens, processor.num_dream_queries)
    assert loaded.chat_template == processor.chat_template
    text = "read <image> then draw <dream>"
    image = torch.randint(0, 256, (20, 30, 3), dtype=torch.uint8).numpy()
    expected, actual = processor(text=text, images=[image]), loaded(text=text, images=[image])
    assert expected["input_ids"] == actual["input_ids"]
    assert (torch.tensor(expected["pixel_values"]) == torch.tensor(actual["pixel_values"])).all()


def test_from_pretrained_loads_the_dream_parts(tiny, saved_tiny):
    model, _ = tiny
    loaded = DreamLLMForCausalLM.from_pretrained(saved_tiny)
    for name in ("dream_queries.weight", "dream_projector.weight", "vision_projector.bias"):
        assert torch.equal(loaded.model.get_parameter(name), model.model.get_parameter(name))
