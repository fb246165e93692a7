"""Loads the official-tiny fixture (original release layout) through the converter, for the parity tests."""

import tempfile
from pathlib import Path

from dreamllm import DreamLLMForCausalLM, DreamLLMPipeline
from dreamllm.conversion import convert_original_checkpoint


def load_official_tiny_pipeline(root: Path, **convert_kwargs) -> DreamLLMPipeline:
    """The fixture's checkpoint converted by `dreamllm.conversion` and loaded back with eager attention."""
    with tempfile.TemporaryDirectory() as scratch:
        converted = convert_original_checkpoint(root / "checkpoint", Path(scratch) / "converted", **convert_kwargs)
        return DreamLLMPipeline.from_pretrained(converted, attn_implementation="eager")


def load_official_tiny_model(root: Path, **convert_kwargs) -> DreamLLMForCausalLM:
    """The converted fixture's model, in eval mode."""
    return load_official_tiny_pipeline(root, **convert_kwargs).model.eval()
