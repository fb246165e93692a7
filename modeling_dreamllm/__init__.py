"""DreamLLM configuration and modeling."""

from .configuration_dreamllm import DreamLLMConfig
from .modeling_dreamllm import (
    DreamLLMCausalLMOutputWithPast,
    DreamLLMForCausalLM,
    DreamLLMModel,
    DreamLLMModelOutputWithPast,
    DreamLLMPreTrainedModel,
    DreamQueries,
    drawing_eos_token_ids,
    pipeline_only_token_ids,
    plain_generation_settings,
)

__all__ = [
    "DreamLLMCausalLMOutputWithPast",
    "DreamLLMConfig",
    "DreamLLMForCausalLM",
    "DreamLLMModel",
    "DreamLLMModelOutputWithPast",
    "DreamLLMPreTrainedModel",
    "DreamQueries",
    "drawing_eos_token_ids",
    "pipeline_only_token_ids",
    "plain_generation_settings",
]
