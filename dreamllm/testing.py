"""Tiny DreamLLM components built locally in seconds, for tests (ours and users')."""

import torch
from diffusers import AutoencoderKL, UNet2DConditionModel
from transformers.models.clip.image_processing_pil_clip import CLIPImageProcessorPil

from dreamllm.modeling_dreamllm import DreamLLMConfig, DreamLLMForCausalLM
from dreamllm.pipelines import DreamLLMPipeline, default_scheduler
from dreamllm.processing import DreamLLMProcessor
from dreamllm.processing.tokenization_dreamllm import build_tiny_tokenizer

TINY_IMAGE_SIZE = 16
TINY_PATCH_SIZE = 4
TINY_NUM_DREAM_QUERIES = 4
TINY_CONDITION_DIM = 8


def config_for_tokenizer(tokenizer, text_config: dict, vision_config: dict, **kwargs) -> DreamLLMConfig:
    """
    A DreamLLM config whose vocabulary and special-token ids (BOS, EOS, padding and the eight DreamLLM tokens) are
    those of `tokenizer`; `text_config` and `vision_config` give the sizes, `kwargs` the other DreamLLM fields.
    """
    token_ids = {"bos_token_id": tokenizer.bos_token_id, "eos_token_id": tokenizer.eos_token_id,
                 "pad_token_id": tokenizer.pad_token_id}
    dreamllm_token_ids = {
        name: getattr(tokenizer, name)
        for name in ("image_token_id", "image_patch_token_id", "image_start_token_id", "image_end_token_id",
                     "dream_token_id", "dream_start_token_id", "dream_end_token_id")
    }
    return DreamLLMConfig(
        text_config={"vocab_size": len(tokenizer), **text_config, **token_ids},
        vision_config=vision_config,
        pad_token_id=tokenizer.pad_token_id,
        **dreamllm_token_ids,
        **kwargs,
    )


def tiny_config(tokenizer) -> DreamLLMConfig:
    """A DreamLLM config a few hundred thousand parameters big, with the special-token ids of `tokenizer`."""
    return config_for_tokenizer(
        tokenizer,
        text_config={
            "hidden_size": 32,
            "intermediate_size": 64,
            "num_hidden_layers": 2,
            "num_attention_heads": 4,
            "num_key_value_heads": 2,
            "max_position_embeddings": 512,
        },
        vision_config={
            "hidden_size": 16,
            "intermediate_size": 32,
            "num_hidden_layers": 2,
            "num_attention_heads": 2,
            "image_size": TINY_IMAGE_SIZE,
            "patch_size": TINY_PATCH_SIZE,
            "projection_dim": 16,
        },
        num_dream_queries=TINY_NUM_DREAM_QUERIES,
        condition_dim=TINY_CONDITION_DIM,
    )


def tiny_processor() -> DreamLLMProcessor:
    """The processor of the tiny model: the tiny tokenizer and a 16 px CLIP image processor."""
    image_processor = CLIPImageProcessorPil(
        size={"shortest_edge": TINY_IMAGE_SIZE}, crop_size={"height": TINY_IMAGE_SIZE, "width": TINY_IMAGE_SIZE}
    )
    return DreamLLMProcessor(
        image_processor=image_processor,
        tokenizer=build_tiny_tokenizer(),
        num_image_tokens=(TINY_IMAGE_SIZE // TINY_PATCH_SIZE) ** 2,
        num_dream_queries=TINY_NUM_DREAM_QUERIES,
    )


def tiny_model_and_processor(seed: int = 0) -> tuple[DreamLLMForCausalLM, DreamLLMProcessor]:
    """
    A randomly initialised tiny DreamLLM and its processor, with every special token in place. The same seed gives
    the same weights; the global random state is left as it was.
    """
    processor = tiny_processor()
    config = tiny_config(processor.tokenizer)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = DreamLLMForCausalLM(config)
    return model.eval(), processor


def tiny_unet() -> UNet2DConditionModel:
    """A UNet for the 4x8x8 latents of the tiny VAE, conditioned on the tiny model's dream conditions."""
    return UNet2DConditionModel(
        sample_size=8,
        in_channels=4,
        out_channels=4,
        block_out_channels=(16, 32),
        down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
        cross_attention_dim=TINY_CONDITION_DIM,
        attention_head_dim=4,
        layers_per_block=1,
        norm_num_groups=8,
    )


def tiny_vae() -> AutoencoderKL:
    """A VAE with scale factor 4 (32 px images, 8x8 latents)."""
    return AutoencoderKL(
        in_channels=3,
        out_channels=3,
        block_out_channels=(8, 16, 16),
        down_block_types=("DownEncoderBlock2D",) * 3,
        up_block_types=("UpDecoderBlock2D",) * 3,
        latent_channels=4,
        norm_num_groups=4,
        layers_per_block=1,
        sample_size=32,
    )


def tiny_pipeline(seed: int = 0) -> DreamLLMPipeline:
    """A tiny random DreamLLMPipeline (model, processor, UNet, VAE, DDPM scheduler) built in seconds; same seed, same weights."""
    model, processor = tiny_model_and_processor(seed)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        unet, vae = tiny_unet().eval(), tiny_vae().eval()
    return DreamLLMPipeline(model=model, processor=processor, unet=unet, vae=vae, scheduler=default_scheduler())
