"""One call from a saved DreamLLMPipeline and its training data to a trained model (what `dreamllm train` runs)."""

import logging
import math
import os
from pathlib import Path

import torch
from transformers import TrainingArguments, set_seed

from dreamllm.hub_files import hub_model_id
from dreamllm.pipelines import DreamLLMPipeline

from .data import DreamLLMDataCollator, diffusion_resolution
from .lora import apply_lora, dreamllm_lora_config
from .sources import DataSource
from .stages import TrainingStage, apply_stage, get_stage
from .streaming import MAX_CONSECUTIVE_SKIPS, DocumentStream
from .trainer import DreamLLMTrainer

logger = logging.getLogger(__name__)

LORA_LEARNING_RATE = 2e-4
POSITIVE_INTEGERS = ("max_steps", "per_device_train_batch_size", "gradient_accumulation_steps", "save_steps",
                     "logging_steps", "lora_rank", "shuffle_buffer", "max_consecutive_skips")
NON_NEGATIVE_INTEGERS = ("dataloader_num_workers",)


def check_numbers(**values):
    """
    Raises a `ValueError` naming the first value that is not what training needs: positive integers (steps, sizes,
    rank), a non-negative number of workers, a seed in [0, 2**32), a finite positive learning rate, a condition
    dropout in [0, 1].
    """
    for name, value in values.items():
        if name in POSITIVE_INTEGERS and not (isinstance(value, int) and not isinstance(value, bool) and value >= 1):
            raise ValueError(f"{name} must be a positive integer, got {value!r}")
        if name in NON_NEGATIVE_INTEGERS and not (isinstance(value, int) and value >= 0):
            raise ValueError(f"{name} must be a non-negative integer, got {value!r}")
        if name == "seed" and not (isinstance(value, int) and 0 <= value < 2**32):
            raise ValueError(f"seed must be an integer in [0, 2**32), got {value!r}")
        if name == "learning_rate" and not (isinstance(value, (int, float)) and math.isfinite(value) and value > 0):
            raise ValueError(f"learning_rate must be a finite positive number, got {value!r}")
        if name == "condition_dropout" and not (isinstance(value, (int, float)) and 0 <= value <= 1):
            raise ValueError(f"condition_dropout must be in [0, 1], got {value!r}")


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
    save_dtype: str = "float32",
) -> DreamLLMTrainer:
    """
    A [`DreamLLMTrainer`] for `pipeline`'s model, prepared for `stage` (or LoRA), on `train_dataset` (a
    [`DocumentStream`], or a dataset of records or documents such as a [`JsonlDocumentDataset`]). `random_flip`
    flips diffusion targets at random (per document on a stream, seeded by `args.seed`); turn it off for pictures
    whose sides matter. `condition_dropout` trains the unconditional condition of classifier-free guidance and
    `save_dtype` is the dtype of saved weights (see [`DreamLLMTrainer`]).
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
        run_settings=run_settings(stage, lora_rank if lora else None, train_dataset),
        model=model,
        args=args,
        train_dataset=train_dataset,
        data_collator=collator,
        processing_class=pipeline.processor,
        unet=pipeline.unet,
        vae=pipeline.vae,
        noise_scheduler=pipeline.scheduler,
        condition_dropout=condition_dropout,
        save_dtype=save_dtype,
    )


def run_settings(stage: int | TrainingStage, lora_rank: int | None, train_dataset) -> dict:
    """
    What a trained model's card states about its run beyond the Trainer's own settings: the stage, the LoRA rank
    (`None` for full training) and, for a [`DocumentStream`], its data sources (see `data_source_name`).
    """
    sources = [data_source_name(source) for source in train_dataset.sources] if isinstance(
        train_dataset, DocumentStream) else None
    return {"stage": get_stage(stage).number, "lora_rank": lora_rank, "data": sources}


def data_source_name(source: DataSource) -> str:
    """
    `READER:NAME@WEIGHT` for a source: NAME is a Hub dataset's id, else the last part of the local path (a local
    folder is never published).
    """
    name = hub_model_id(source.path) if source.reader_name == "hf" else None
    return f"{source.reader_name}:{name or Path(source.path).name}@{source.weight:g}"


def train(
    model: str | os.PathLike | None,
    data: str | os.PathLike | DataSource | list[str | os.PathLike | DataSource],
    output_dir: str | os.PathLike,
    stage: int = 2,
    lora: bool = False,
    resume_from_checkpoint: str | bool | None = None,
    lora_rank: int = 16,
    random_flip: bool = True,
    condition_dropout: float = 0.0,
    shuffle_buffer: int = 1000,
    max_consecutive_skips: int = MAX_CONSECUTIVE_SKIPS,
    save_dtype: str = "float32",
    **training_arguments,
) -> Path:
    """
    Trains the DreamLLM saved in `model` (a [`DreamLLMPipeline`] folder or Hub repo) on `data` and saves the result in
    `output_dir`: a pipeline folder for `DreamLLMPipeline.from_pretrained`, or with `lora` an adapter folder for
    `PeftModel.from_pretrained`. Checkpoints go to `output_dir/checkpoint-<step>` (each complete or absent).

    Args:
        model, output_dir: Paths (`model` may be a Hub repo id).
        data: One or more sources (see `dreamllm.training.sources`): paths, glob or brace patterns,
            `[READER:]PATH[@WEIGHT]` strings or [`DataSource`]s, streamed and mixed by weight ([`DocumentStream`]).
        stage (`int`, *optional*, defaults to 2): 1, 2 or 3; see `dreamllm.training.stages`.
        lora (`bool`, *optional*): Train a LoRA adapter instead of the full weights (stages 2 and 3).
        resume_from_checkpoint (`str` or `bool`, *optional*): A checkpoint folder, or `True` for the newest complete
            one in `output_dir`. A checkpoint at `max_steps` trains no further; the data resume where they were.
        lora_rank (`int`, *optional*, defaults to 16): LoRA rank (alpha is twice the rank).
        random_flip (`bool`, *optional*, defaults to `True`): Flip diffusion targets horizontally at random.
        condition_dropout (`float`, *optional*, defaults to 0): Probability of training a dream block on the
            unconditional condition instead of its own (classifier-free guidance dropout).
        shuffle_buffer (`int`, *optional*, defaults to 1000): Examples per shuffled block of the stream.
        max_consecutive_skips (`int`, *optional*, defaults to 1000): Unusable records in a row after which reading
            stops with a `ValueError` naming the sources and the reasons (scattered bad records are only counted).
        save_dtype (`str`, *optional*, defaults to `"float32"`): Dtype of the saved weights.
        **training_arguments: Overrides of [`dreamllm_training_arguments`] (`max_steps`, `learning_rate`,
            `per_device_train_batch_size`, `gradient_accumulation_steps`, `bf16`, `activation_checkpointing`,
            `dataloader_num_workers`, ...).

    Returns:
        `output_dir` as a `Path`.

    Raises:
        `ValueError`: naming the option, for a number training cannot use (`max_steps` 0 or negative, a zero
            accumulation, a seed out of range, ...); `FileNotFoundError` for data that match no file; `ValueError` when
            the data give `max_consecutive_skips` unusable records in a row.
    """
    check_numbers(
        lora_rank=lora_rank, shuffle_buffer=shuffle_buffer, max_consecutive_skips=max_consecutive_skips,
        condition_dropout=condition_dropout, **{name: value for name, value in training_arguments.items() if name in (*POSITIVE_INTEGERS,
           *NON_NEGATIVE_INTEGERS, "seed", "learning_rate")},
    )
    training_arguments.setdefault("max_steps", 1000)
    check_numbers(max_steps=training_arguments["max_steps"])
    args = dreamllm_training_arguments(output_dir, stage=stage, lora=lora, **training_arguments)
    pipeline = DreamLLMPipeline.from_pretrained(model)
    sources = data if isinstance(data, list) else [data]
    sources = [source if isinstance(source, DataSource) else DataSource.parse(str(source)) for source in sources]
    max_length = pipeline.model.config.text_config.max_position_embeddings
    stream = DocumentStream(sources, pipeline.processor, max_length=max_length, seed=args.seed,
                            shuffle_buffer=shuffle_buffer, max_consecutive_skips=max_consecutive_skips)
    trainer = build_trainer(
        pipeline, stream, args, stage=stage, lora=lora, lora_rank=lora_rank, random_flip=random_flip,
        condition_dropout=condition_dropout, save_dtype=save_dtype,
    )
    trainer.train(resume_from_checkpoint=resume_from_checkpoint)
    trainer.save_pretrained(output_dir)
    return Path(output_dir)


__all__ = ["build_trainer", "dreamllm_training_arguments", "prepare_model_for_training", "train"]
