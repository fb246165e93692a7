"""Loads DreamLLM through the Hugging Face Auto classes and DiffusionPipeline from the installed `dreamllm` package."""

try:
    from dreamllm import (
        DreamLLMConfig,
        DreamLLMForCausalLM,
        DreamLLMModel,
        DreamLLMPipeline,
        DreamLLMProcessor,
    )
except ImportError as error:
    raise ImportError(
        "This DreamLLM repo needs the `dreamllm` package installed; it is not on PyPI: run `pip install .` in a checkout of its source"
    ) from error

__all__ = ["DreamLLMConfig", "DreamLLMForCausalLM", "DreamLLMModel", "DreamLLMPipeline", "DreamLLMProcessor"]
