"""Loads the official-tiny fixture (original release layout) into our classes, for the parity tests.

The key names are mapped by hand here; `dreamllm.conversion` is the real converter.
"""

import json
from pathlib import Path

import torch
from diffusers import AutoencoderKL, UNet2DConditionModel
from safetensors.torch import load_file
from transformers import CLIPVisionConfig

from dreamllm import DreamLLMConfig, DreamLLMForCausalLM, DreamLLMPipeline
from dreamllm.pipelines import default_scheduler
from dreamllm.processing import DreamLLMProcessor
from dreamllm.processing.tokenization_dreamllm import convert_original_tokenizer
from transformers import CLIPImageProcessor

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


def load_official_tiny_model(root: Path) -> DreamLLMForCausalLM:
    """Builds the model from the original files with the key names mapped by hand."""
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


def load_official_tiny_pipeline(root: Path) -> DreamLLMPipeline:
    """The whole fixture as a pipeline: model, processor, and the UNet/VAE copies inside the SD-head plugin."""
    model = load_official_tiny_model(root)
    processor = DreamLLMProcessor(
        image_processor=CLIPImageProcessor.from_pretrained(root / "upstream" / "clip-vit-tiny"),
        tokenizer=convert_original_tokenizer(root / "checkpoint"),
        num_image_tokens=model.config.num_image_tokens,
        num_dream_queries=model.config.num_dream_queries,
    )
    head = torch.load(root / "checkpoint" / "stable_diffusion_head.bin", weights_only=True)
    diffusion = {}
    for name, component_class in (("unet", UNet2DConditionModel), ("vae", AutoencoderKL)):
        component = component_class.from_config(component_class.load_config(root / "upstream" / "sd-tiny" / name))
        prefix = f"{name}."
        component.load_state_dict({key[len(prefix):]: value for key, value in head.items() if key.startswith(prefix)})
        diffusion[name] = component.eval()
    return DreamLLMPipeline(model=model, processor=processor, scheduler=default_scheduler(), **diffusion)
