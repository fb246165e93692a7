"""DreamLLM configuration and modeling."""

from .configuration_dreamllm import DreamLLMConfig
from .modeling_dreamllm import (
    DreamLLMCausalLMOutputWithPast,
    DreamLLMForCausalLM,
    DreamLLMModel,
    DreamLLMModelOutputWithPast,
    DreamLLMPreTrainedModel,
    DreamQueries,
)

__all__ = [
    "DreamLLMCausalLMOutputWithPast",
    "DreamLLMConfig",
    "DreamLLMForCausalLM",
    "DreamLLMModel",
    "DreamLLMModelOutputWithPast",
    "DreamLLMPreTrainedModel",
    "DreamQueries",
]
