"""One call from a saved DreamLLMPipeline and a JSON Lines file to a trained model (what `dreamllm train` runs)."""

import logging
import os
from pathlib import Path

import torch
from transformers import TrainingArguments, set_seed

from dreamllm.pipelines import DreamLLMPipeline

from .data import DreamLLMDataCollator, JsonlDocumentDataset, diffusion_resolution
from .lora import apply_lora, dreamllm_lora_config
from .stages import TrainingStage, apply_stage, get_stage
from .trainer import DreamLLMTrainer

logger = logging.getLogger(__name__)

LORA_LEARNING_RATE = 2e-4


def prepare_model_for_training(model, stage: int | TrainingStage, lora: bool = False, lora_rank: int = 16):
    """
    Sets what trains in `model` (a [`DreamLLMForCausalLM`]): the stage preset, or, with `lora`, LoRA on the
    language model plus the DreamLLM modules (see [`dreamllm_lora_config`]). Returns the model to train (a
    `PeftModel` with `lora`).

    Raises:
        `ValueError`: for LoRA in a stage that does not train the language model.
    """
    stage = get_stage(stage)
    if not lora:
        apply_stage(model, stage)
        return model
    if not stage.trains_language_model:
        raise ValueError(f"stage {stage.number} trains no language-model weights; LoRA applies to stages 2 and 3")
    return apply_lora(model, dreamllm_lora_config(model.config, r=lora_rank, lora_alpha=2 * lora_rank))


def dreamllm_training_arguments(
    output_dir: str | os.PathLike, stage: int | TrainingStage = 2, lora: bool = False, **kwargs
) -> TrainingArguments:
    """
    `TrainingArguments` with DreamLLM's defaults, overridden by `kwargs`: the stage's learning rate (2e-4 with LoRA),
    cosine schedule, batches kept as the collator builds them, DDP tolerant of steps without images, the CPU when no
    accelerator is present, no experiment trackers.
    """
    defaults = {
        "learning_rate": LORA_LEARNING_RATE if lora else get_stage(stage).learning_rate,
        "lr_scheduler_type": "cosine",
        "warmup_steps": 0.03,
        "logging_steps": 10,
        "save_steps": 500,
        "remove_unused_columns": False,
        "ddp_find_unused_parameters": True,
        "use_cpu": not torch.accelerator.is_available(),
        "report_to": "none",
    }
    return TrainingArguments(output_dir=str(output_dir), **{**defaults, **kwargs})


def build_trainer(
    pipeline: DreamLLMPipeline,
    train_dataset: torch.utils.data.Dataset,
    args: TrainingArguments,
    stage: int | TrainingStage = 2,
    lora: bool = False,
    lora_rank: int = 16,
    random_flip: bool = True,
    condition_dropout: float = 0.0,
) -> DreamLLMTrainer:
    """
    A [`DreamLLMTrainer`] for `pipeline`'s model, prepared for `stage` (or LoRA), on `train_dataset` (records of
    documents, e.g. a [`JsonlDocumentDataset`]). `random_flip` flips diffusion targets at random (seeded by
    `args.seed`; the draws restart when training resumes); turn it off for pictures whose sides matter.
    `condition_dropout` trains the unconditional condition of classifier-free guidance (see [`DreamLLMTrainer`]).
    """
    set_seed(args.seed)
    model = prepare_model_for_training(pipeline.model, stage, lora=lora, lora_rank=lora_rank)
    collator = DreamLLMDataCollator(
        pipeline.processor,
        diffusion_resolution=diffusion_resolution(pipeline.unet, pipeline.vae),
        random_flip=random_flip,
        seed=args.seed,
    )
    return DreamLLMTrainer(
        model=model,
        args=args,
        train_dataset=train_dataset,
        data_collator=collator,
        processing_class=pipeline.processor,
        unet=pipeline.unet,
        vae=pipeline.vae,
        noise_scheduler=pipeline.scheduler,
        condition_dropout=condition_dropout,
    )


def train(
    model: str | os.PathLike,
    data: str | os.PathLike,
    output_dir: str | os.PathLike,
    stage: int = 2,
    lora: bool = False,
    resume_from_checkpoint: str | bool | None = None,
    lora_rank: int = 16,
    random_flip: bool = True,
    condition_dropout: float = 0.0,
    **training_arguments,
) -> Path:
    """
    Trains the DreamLLM saved in `model` (a [`DreamLLMPipeline`] folder or Hub repo) on the documents of `data` (a
    JSON Lines file, see `dreamllm.training.data`) and saves the result in `output_dir`: a pipeline folder for
    `DreamLLMPipeline.from_pretrained`, or with `lora` an adapter folder for `PeftModel.from_pretrained`.
    Checkpoints go to `output_dir/checkpoint-<step>`.

    Args:
        model, data, output_dir: Paths (`model` may be a Hub repo id).
        stage (`int`, *optional*, defaults to 2): 1, 2 or 3; see `dreamllm.training.stages`.
        lora (`bool`, *optional*): Train a LoRA adapter instead of the full weights (stages 2 and 3).
        resume_from_checkpoint (`str` or `bool`, *optional*): A checkpoint folder, or `True` for the latest one in
            `output_dir`.
        lora_rank (`int`, *optional*, defaults to 16): LoRA rank (alpha is twice the rank).
        random_flip (`bool`, *optional*, defaults to `True`): Flip diffusion targets horizontally at random.
        condition_dropout (`float`, *optional*, defaults to 0): Probability of training a dream block on the
            unconditional condition instead of its own (classifier-free guidance dropout).
        **training_arguments: Overrides of [`dreamllm_training_arguments`] (`max_steps`, `learning_rate`,
            `per_device_train_batch_size`, `gradient_accumulation_steps`, `bf16`, `activation_checkpointing`, ...).

    Returns:
        `output_dir` as a `Path`.
    """
    args = dreamllm_training_arguments(output_dir, stage=stage, lora=lora, **training_arguments)
    pipeline = DreamLLMPipeline.from_pretrained(model)
    max_length = pipeline.model.config.text_config.max_position_embeddings
    dataset = JsonlDocumentDataset(data, pipeline.processor, max_length=max_length)
    if get_stage(stage).expects_chat_data and any("segments" in record for record in dataset.records):
        logger.warning("stage %d is instruction tuning, but %s holds documents that are not conversations", stage, data)
    trainer = build_trainer(
        pipeline, dataset, args, stage=stage, lora=lora, lora_rank=lora_rank, random_flip=random_flip,
        condition_dropout=condition_dropout,
    )
    trainer.train(resume_from_checkpoint=resume_from_checkpoint)
    trainer.save_pretrained(output_dir)
    return Path(output_dir)


__all__ = ["build_trainer", "dreamllm_training_arguments", "prepare_model_for_training", "train"]
