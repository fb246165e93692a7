"""DreamLLM processor and tokenizer helpers."""

from .processing_dreamllm import VICUNA_V1_1_CHAT_TEMPLATE, DreamLLMProcessor

__all__ = ["DreamLLMProcessor", "VICUNA_V1_1_CHAT_TEMPLATE"]
