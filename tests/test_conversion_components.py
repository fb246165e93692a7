"""`dreamllm convert --from-components`: an untrained DreamLLM from a tiny local Llama, CLIP and Stable Diffusion."""

import json
import shutil

import pytest
import torch
from local_hub import LocalHub
from safetensors.torch import load_file
from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

from dreamllm import DreamLLMPipeline
from dreamllm.cli import main as cli_main
from dreamllm.processing.tokenization_dreamllm import DREAMLLM_ADDED_TOKENS

LLM_VOCAB = 600


@pytest.fixture(scope="module")
def llm_dir(official_tiny, tmp_path_factory):
    """A tiny random Llama with the fixture's 600-piece sentencepiece tokenizer, as slow Vicuna files."""
    folder = tmp_path_factory.mktemp("llama")
    shutil.copy(official_tiny / "checkpoint" / "tokenizer.model", folder / "tokenizer.model")
    tokenizer_config = {
        "tokenizer_class": "LlamaTokenizer", "legacy": True, "add_bos_token": True, "add_eos_token": False,
        "bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>",
    }  # fmt: skip
    (folder / "tokenizer_config.json").write_text(json.dumps(tokenizer_config))
    config = LlamaConfig(
        vocab_size=LLM_VOCAB, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
        max_position_embeddings=512, pad_token_id=0,
    )  # fmt: skip
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        LlamaForCausalLM(config).save_pretrained(folder)
    return folder


def component_arguments(official_tiny, llm_dir, output) -> list[str]:
    """`dreamllm convert --from-components` with the tiny Llama and the fixture's upstream CLIP and Stable Diffusion."""
    upstream = official_tiny / "upstream"
    return [
        "convert", "--from-components", "--llm", str(llm_dir), "--vision", str(upstream / "clip-vit-tiny"),
        "--diffusion", str(upstream / "sd-tiny"), "--output", str(output),
    ]  # fmt: skip


@pytest.fixture(scope="module")
def built(official_tiny, llm_dir, tmp_path_factory):
    output = tmp_path_factory.mktemp("built") / "dreamllm"
    assert cli_main([*component_arguments(official_tiny, llm_dir, output), "--num-dream-queries", "8"]) == 0
    return output


def test_tokens_are_added_and_the_embeddings_grown(built, llm_dir):
    pipe = DreamLLMPipeline.from_pretrained(built)
    tokenizer, config = pipe.processor.tokenizer, pipe.model.config
    assert len(tokenizer) == config.text_config.vocab_size == LLM_VOCAB + len(DREAMLLM_ADDED_TOKENS)
    assert [tokenizer.convert_tokens_to_ids(token) for token in DREAMLLM_ADDED_TOKENS] == list(range(600, 608))
    assert (config.pad_token_id, config.image_token_id, config.dream_end_token_id) == (600, 601, 607)
    assert (
        tokenizer("A photo of a cat").input_ids == AutoTokenizer.from_pretrained(llm_dir)("A photo of a cat").input_ids
    )
    llama = load_file(llm_dir / "model.safetensors")
    state = pipe.model.state_dict()
    assert torch.equal(
        state["model.language_model.embed_tokens.weight"][:LLM_VOCAB], llama["model.embed_tokens.weight"]
    )
    assert torch.equal(state["lm_head.weight"][:LLM_VOCAB], llama["lm_head.weight"])
    assert torch.equal(
        state["model.language_model.layers.1.mlp.down_proj.weight"], llama["model.layers.1.mlp.down_proj.weight"]
    )


def test_vision_and_diffusion_components_are_the_given_ones(built, official_tiny):
    pipe = DreamLLMPipeline.from_pretrained(built)
    clip = load_file(official_tiny / "upstream" / "clip-vit-tiny" / "model.safetensors")
    tower = pipe.model.model.vision_tower.state_dict()
    assert all(torch.equal(tower[key.removeprefix("vision_model.")], value) for key, value in clip.items())
    unet = load_file(official_tiny / "upstream" / "sd-tiny" / "unet" / "diffusion_pytorch_model.safetensors")
    assert all(torch.equal(pipe.unet.state_dict()[key], value) for key, value in unet.items())
    assert pipe.model.config.condition_dim == pipe.unet.config.cross_attention_dim == 32
    assert pipe.scheduler.config.timestep_spacing == "leading" and pipe.scheduler.config.clip_sample is False


@torch.no_grad()
def test_new_parts_are_initialized_and_the_model_reads_and_dreams(built):
    pipe = DreamLLMPipeline.from_pretrained(built)
    model = pipe.model
    queries = model.model.dream_queries.weight
    assert queries.shape == (8, 32) and 0.005 < queries.std().item() < 0.05
    assert torch.count_nonzero(model.model.vision_projector.bias) == 0 and model.model.dream_projector.weight.std() > 0
    conditions = model.get_dream_conditions(
        pipe.processor.tokenizer(["A photo of a cat"], return_tensors="pt").input_ids
    )
    assert conditions.shape == (1, 8, 32) and torch.isfinite(conditions).all()


def test_an_existing_output_is_kept_without_force(built, official_tiny, llm_dir, capsys):
    assert cli_main(component_arguments(official_tiny, llm_dir, built)) == 2
    assert "already exists" in capsys.readouterr().err


def test_the_uploaded_card_says_untrained_and_carries_the_llm_folders_license(official_tiny, llm_dir, tmp_path,
                                                                             monkeypatch):
    licensed_llm = tmp_path / "vicuna"
    shutil.copytree(llm_dir, licensed_llm)
    (licensed_llm / "README.md").write_text("---\nlicense: llama2\n---\n# Vicuna tiny\n")
    LocalHub.install(monkeypatch)
    arguments = [*component_arguments(official_tiny, licensed_llm, tmp_path / "built"), "--num-dream-queries", "8"]
    assert cli_main([*arguments, "--push-to-hub", "me/dreamllm-untrained"]) == 0
    metadata = LocalHub.card_metadata()
    assert metadata["license"] == "llama2"
    assert metadata["dreamllm"]["components"] == {"num_dream_queries": 8, "seed": 0, "dtype": "float32"}
    assert "## Untrained" in LocalHub.card() and "neither understands images nor draws" in LocalHub.card()
    assert "## Conversion" not in LocalHub.card() and str(tmp_path) not in LocalHub.card()
    assert cli_main([*arguments, "--push-to-hub", "me/dreamllm-untrained", "--force", "--license", "mit"]) == 0
    assert LocalHub.card_metadata()["license"] == "mit"  # --license overrides the --llm folder's
