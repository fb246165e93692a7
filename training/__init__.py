"""Training DreamLLM: streamed, mixed corpora and their collator, the two-part objective, stage presets, LoRA, and a
Trainer.

The toy world (its data, its small VAE/UNet/CLIP and the recipe of the built-in model) lives in `dreamllm.toy_world`.
"""

from .data import (
    DiffusionImageTransform,
    DocumentEncoder,
    DocumentError,
    DreamLLMDataCollator,
    EncodedDocument,
    JsonlDocumentDataset,
    diffusion_resolution,
)
from .diffusion import DiffusionDraws, DiffusionObjective
from .sources import DataSource
from .streaming import DocumentStream
from .hub import push_trained_to_hub
from .lora import adapter_model_card, apply_lora, dreamllm_lora_config, push_adapter_to_hub, write_adapter_model_card
from .stages import STAGES, TrainingStage, apply_stage, get_stage
from .train import build_trainer, dreamllm_training_arguments, prepare_model_for_training, train
from .trainer import DreamLLMTrainer

__all__ = [
    "STAGES",
    "DataSource",
    "DiffusionDraws",
    "DiffusionImageTransform",
    "DiffusionObjective",
    "DocumentEncoder",
    "DocumentError",
    "DocumentStream",
    "DreamLLMDataCollator",
    "DreamLLMTrainer",
    "EncodedDocument",
    "JsonlDocumentDataset",
    "TrainingStage",
    "adapter_model_card",
    "apply_lora",
    "apply_stage",
    "build_trainer",
    "diffusion_resolution",
    "dreamllm_lora_config",
    "dreamllm_training_arguments",
    "get_stage",
    "prepare_model_for_training",
    "push_adapter_to_hub",
    "push_trained_to_hub",
    "train",
    "write_adapter_model_card",
]
