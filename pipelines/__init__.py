"""DreamLLM pipelines: the diffusers DreamLLMPipeline and the transformers "interleaved-generation" task."""

from .pipeline_dreamllm import DreamLLMPipeline, DreamLLMPipelineOutput, default_scheduler

__all__ = ["DreamLLMPipeline", "DreamLLMPipelineOutput", "default_scheduler"]
