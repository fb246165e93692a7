"""DreamLLM for the Hugging Face ecosystem: one LLM that reads and writes images inside free-form documents.

Importing `dreamllm` registers the DreamLLM classes with the transformers Auto classes (model type "dreamllm"), so a
converted checkpoint loads with `AutoConfig`, `AutoModel`, `AutoModelForCausalLM`, `AutoModelForImageTextToText` and
`AutoProcessor`.
"""

from transformers import (
    AutoConfig,
    AutoModel,
    AutoModelForCausalLM,
    AutoModelForImageTextToText,
    AutoProcessor,
)

from dreamllm.peft_compatibility import allow_released_peft
from dreamllm.modeling_dreamllm import DreamLLMConfig, DreamLLMForCausalLM, DreamLLMModel
from dreamllm.pipelines import TOY_MODEL_PATH, DreamLLMPipeline, DreamLLMPipelineOutput
import dreamllm.pipelines.interleaved_generation  # noqa: F401  (registers the transformers task "interleaved-generation")
from dreamllm.processing import DreamLLMProcessor

__version__ = "0.1.0"


def _register_auto_classes():
    AutoConfig.register(DreamLLMConfig.model_type, DreamLLMConfig)
    AutoModel.register(DreamLLMConfig, DreamLLMModel)
    AutoModelForCausalLM.register(DreamLLMConfig, DreamLLMForCausalLM)
    AutoModelForImageTextToText.register(DreamLLMConfig, DreamLLMForCausalLM)
    AutoProcessor.register(DreamLLMConfig, DreamLLMProcessor)


_register_auto_classes()
allow_released_peft()

__all__ = [
    "TOY_MODEL_PATH",
    "DreamLLMConfig",
    "DreamLLMForCausalLM",
    "DreamLLMModel",
    "DreamLLMPipeline",
    "DreamLLMPipelineOutput",
    "DreamLLMProcessor",
]
