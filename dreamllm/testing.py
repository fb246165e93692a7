"""Tiny DreamLLM components built locally in seconds, for tests (ours and users')."""

import torch
from transformers.models.clip.image_processing_pil_clip import CLIPImageProcessorPil

from dreamllm.modeling_dreamllm import DreamLLMConfig, DreamLLMForCausalLM
from dreamllm.processing import DreamLLMProcessor
from dreamllm.processing.tokenization_dreamllm import build_tiny_tokenizer

TINY_IMAGE_SIZE = 16
TINY_PATCH_SIZE = 4
TINY_NUM_DREAM_QUERIES = 4
TINY_CONDITION_DIM = 8


def tiny_config(tokenizer) -> DreamLLMConfig:
    """A DreamLLM config a few hundred thousand parameters big, with the special-token ids of `tokenizer`."""
    return DreamLLMConfig(
        text_config={
            "vocab_size": len(tokenizer),
            "hidden_size": 32,
            "intermediate_size": 64,
            "num_hidden_layers": 2,
            "num_attention_heads": 4,
            "num_key_value_heads": 2,
            "max_position_embeddings": 512,
            "bos_token_id": tokenizer.bos_token_id,
            "eos_token_id": tokenizer.eos_token_id,
            "pad_token_id": tokenizer.pad_token_id,
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
        pad_token_id=tokenizer.pad_token_id,
        image_token_id=tokenizer.image_token_id,
        image_patch_token_id=tokenizer.image_patch_token_id,
        image_start_token_id=tokenizer.image_start_token_id,
        image_end_token_id=tokenizer.image_end_token_id,
        dream_token_id=tokenizer.dream_token_id,
        dream_start_token_id=tokenizer.dream_start_token_id,
        dream_end_token_id=tokenizer.dream_end_token_id,
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
