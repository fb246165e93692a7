"""DreamLLM pipelines: the diffusers DreamLLMPipeline and the transformers "interleaved-generation" task."""

from .pipeline_dreamllm import TOY_MODEL_PATH, DreamLLMPipeline, DreamLLMPipelineOutput, default_scheduler, document_images

__all__ = ["TOY_MODEL_PATH", "DreamLLMPipeline", "DreamLLMPipelineOutput", "default_scheduler", "document_images"]
