"""`DreamLLMTrainer`: transformers' `Trainer` with DreamLLM's two-part objective.

Being a plain `Trainer` subclass, it runs under `accelerate launch` with DDP, FSDP or DeepSpeed configurations, and
keeps the Trainer's gradient accumulation, mixed precision, gradient checkpointing, logging and checkpoint resumption.
Every process runs the same modules and collectives on every step whatever its batch holds (the model's forward takes
care of unused modules; the unconditional pass of condition dropout is a row of the batch), so sharded engines see
the same collectives on every rank.
"""

import json
import logging
import os
import re
import shutil
from pathlib import Path

import torch
from diffusers import AutoencoderKL, UNet2DConditionModel
from diffusers.schedulers.scheduling_utils import SchedulerMixin
from peft import PeftModel
from transformers import Trainer, TrainerState
from transformers.trainer import TRAINING_ARGS_NAME
from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR, rotate_checkpoints

from dreamllm.file_utils import commit_model_files, remove_local_origins, staging_folder
from dreamllm.hub_files import write_loader_files
from dreamllm.pipelines import DreamLLMPipeline
from dreamllm.pipelines.hub import pipeline_model_card

from .diffusion import DiffusionObjective
from .lora import remove_local_base_model, write_adapter_model_card
from .streaming import COUNTED, DocumentStream, derived_seed, skipped_counts

logger = logging.getLogger(__name__)

LOSS_PARTS = ("lm", "diffusion")
TRAINER_STATE_NAME = "trainer_state.json"
DATA_STATE_NAME = "data_state-rank{rank}.json"
CHECKPOINT_PATTERN = re.compile(rf"^{PREFIX_CHECKPOINT_DIR}-(\d+)$")
CHECKPOINT_STAGING_PATTERN = re.compile(rf"^\.{PREFIX_CHECKPOINT_DIR}-\d+\.partial$")
FSDP1_WRAPPER_PREFIX = "_fsdp_wrapped_module."  # in parameter names under FSDP1, not in its state dict
SAVE_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def checkpoint_step(folder: Path) -> int | None:
    match = CHECKPOINT_PATTERN.match(folder.name)
    return int(match.group(1)) if match else None


def latest_complete_checkpoint(output_dir: str | os.PathLike) -> Path | None:
    """
    The newest `checkpoint-<step>` folder of `output_dir` that holds a trainer state (checkpoints are moved in only
    once complete; folders without a state, written by other tools or damaged, are skipped with a warning).
    """
    output_dir = Path(output_dir)
    if not output_dir.is_dir():
        return None
    checkpoints = sorted(
        (folder for folder in output_dir.iterdir() if folder.is_dir() and checkpoint_step(folder) is not None),
        key=checkpoint_step,
        reverse=True,
    )
    for folder in checkpoints:
        if (folder / TRAINER_STATE_NAME).is_file():
            return folder
        logger.warning("%s has no %s: not a complete checkpoint, skipped", folder, TRAINER_STATE_NAME)
    return None


class DreamLLMTrainer(Trainer):
    r"""
    Trains a [`DreamLLMForCausalLM`] (or a PEFT model around one) on batches of [`DreamLLMDataCollator`] with

        loss = loss_weight_lm x LM cross-entropy + loss_weight_diffusion x noise-prediction MSE

    (weights from the model config, 1 and 10 by default). The MSE is computed by a [`DiffusionObjective`] with the
    frozen `unet`, `vae` and `scheduler`, conditioned on the dream conditions of each dream block. Both parts are
    normalized over the whole optimizer step (all label tokens, all dream blocks, across gradient accumulation and
    processes), so accumulating gradients equals training on the larger batch. Logs carry `lm_loss` (mean token
    cross-entropy) and `diffusion_loss` (mean MSE per image) besides the weighted `loss`.

    The UNet and VAE follow the model to its device and dtype; they are not part of the model, so checkpoints hold
    only the model. [`~DreamLLMTrainer.save_pretrained`] writes a folder that `DreamLLMPipeline.from_pretrained` loads
    (or, for a PEFT model, an adapter folder).

    Args:
        model, args, **kwargs: As for [`transformers.Trainer`]; pass the [`DreamLLMProcessor`] as `processing_class`
            so that saved folders carry it.
        unet ([`UNet2DConditionModel`]), vae ([`AutoencoderKL`]), noise_scheduler ([`SchedulerMixin`]):
            The frozen diffusion components.
        condition_dropout (`float`, *optional*, defaults to 0): Probability that a dream block's conditions are
            replaced, in training, by the unconditional ones (the dream block after BOS alone, which classifier-free
            guidance uses at inference), so that the model learns a meaningful "no prompt". The original code's
            `drop_prob`; the released models were trained without it. When it is above 0, every training micro-batch
            gets one more row, the unconditional sequence, so that its conditions come from the same forward pass
            (inside the engine, on every process). Its draws follow `args.seed`, the process and the step, so a
            resumed run draws what the uninterrupted one would.
        save_dtype (`str`, *optional*, defaults to `"float32"`): Dtype of the weights [`save_pretrained`] writes:
            `"float32"`, `"bfloat16"` or `"float16"`, whatever the engine trains in.
        run_settings (`dict`, *optional*): Settings of the run the Trainer does not know (stage, LoRA rank, data
            sources), written with its own (see [`~DreamLLMTrainer.training_settings`]) into the saved model card.
    """

    loss_is_scaled_for_ga = True

    def __init__(
        self,
        model=None,
        args=None,
        *,
        unet: UNet2DConditionModel,
        vae: AutoencoderKL,
        noise_scheduler: SchedulerMixin,
        condition_dropout: float = 0.0,
        save_dtype: str = "float32",
        run_settings: dict | None = None,
        **kwargs,
    ):
        if not 0.0 <= condition_dropout <= 1.0:
            raise ValueError(f"condition_dropout must be in [0, 1], got {condition_dropout}")
        if save_dtype not in SAVE_DTYPES:
            raise ValueError(f"save_dtype must be one of {sorted(SAVE_DTYPES)}, got {save_dtype!r}")
        super().__init__(model=model, args=args, **kwargs)
        self.condition_dropout = condition_dropout
        self.save_dtype = SAVE_DTYPES[save_dtype]
        self.run_settings = dict(run_settings or {})
        self.diffusion_objective = DiffusionObjective(unet, vae, noise_scheduler).to(self.args.device, self.model.dtype)
        self.step_normalizers: dict[str, torch.Tensor] | None = None
        self.micro_batch_index = 0
        self.logged_sums = {name: torch.zeros(2, device=self.args.device) for name in LOSS_PARTS}
        self.checkpoint_staging: Path | None = None
        self.resumes_a_finished_run = False
        self.resume_checkpoint: str | None = None
        self.stream_loader = None
        self.logged_counts: dict[str, int] = {}

    @property
    def dreamllm_config(self):
        return self.accelerator.unwrap_model(self.model).config

    def get_batch_samples(self, epoch_iterator, num_batches: int, device: torch.device):
        """Collects the micro-batches of one optimizer step and counts their label tokens and dream blocks."""
        batch_samples, num_items_in_batch = super().get_batch_samples(epoch_iterator, num_batches, device)
        counts = torch.tensor([sum(self.count_loss_items(batch)[name] for batch in batch_samples) for name in LOSS_PARTS])
        counts = self.accelerator.reduce(counts.to(device), reduction="sum")
        self.step_normalizers = dict(zip(LOSS_PARTS, counts))
        self.micro_batch_index = 0
        return batch_samples, num_items_in_batch

    @staticmethod
    def count_loss_items(batch: dict) -> dict[str, int]:
        """Label tokens (after the causal shift) and dream blocks of a batch."""
        diffusion_pixel_values = batch.get("diffusion_pixel_values")
        return {
            "lm": int((batch["labels"][:, 1:] != -100).sum()),
            "diffusion": 0 if diffusion_pixel_values is None else diffusion_pixel_values.shape[0],
        }

    def compute_loss(self, model, inputs: dict, return_outputs: bool = False, num_items_in_batch=None):
        """
        The weighted sum of the LM cross-entropy and the diffusion MSE of one micro-batch, each divided by its count
        over the optimizer step (over this micro-batch alone outside training).
        """
        inputs = dict(inputs)
        diffusion_pixel_values = inputs.pop("diffusion_pixel_values", None)
        local_counts = self.count_loss_items({**inputs, "diffusion_pixel_values": diffusion_pixel_values})
        normalizers, scale = self.loss_normalizers(model, local_counts)
        with_unconditional_row = model.training and self.condition_dropout > 0
        if with_unconditional_row:
            inputs = self.add_unconditional_row(inputs)
        outputs = model(**inputs, num_items_in_batch=normalizers["lm"])
        lm_sum = outputs.loss * normalizers["lm"]
        conditions = outputs.dream_conditions
        if with_unconditional_row:
            conditions = self.drop_conditions(conditions[:-1], conditions[-1:])
        diffusion_sum = self.diffusion_loss_sum(conditions, diffusion_pixel_values)
        if outputs.dream_conditions is not None:  # every condition takes part in the loss, with weight 0 if unused
            diffusion_sum = diffusion_sum + outputs.dream_conditions.sum() * 0.0
        config = self.dreamllm_config
        loss = (
            config.loss_weight_lm * outputs.loss
            + config.loss_weight_diffusion * diffusion_sum / normalizers["diffusion"]
        ) * scale
        self.record_loss_sums({"lm": lm_sum, "diffusion": diffusion_sum}, local_counts)
        return (loss, outputs) if return_outputs else loss

    def loss_normalizers(self, model, local_counts: dict[str, int]) -> tuple[dict[str, torch.Tensor], int]:
        """
        What each loss part is divided by, and the factor that undoes the averaging of gradients over processes.
        In training the counts cover the whole optimizer step; otherwise this micro-batch.
        """
        if model.training and self.step_normalizers is not None:
            counts, scale = self.step_normalizers, self.accelerator.num_processes
        else:
            counts, scale = {name: torch.tensor(count) for name, count in local_counts.items()}, 1
        return {name: count.to(self.args.device).clamp(min=1) for name, count in counts.items()}, scale

    def add_unconditional_row(self, inputs: dict) -> dict:
        """
        `inputs` with one more row: `<s>` and a dream block, the sequence whose conditions classifier-free guidance
        uses as "no prompt" (labels ignored, no image). Rows are padded on the right to the longer length.
        """
        config = self.dreamllm_config
        row = [config.text_config.bos_token_id, config.dream_start_token_id]
        row += [config.image_patch_token_id] * config.num_dream_queries + [config.dream_end_token_id]
        input_ids, attention_mask, labels = inputs["input_ids"], inputs["attention_mask"], inputs["labels"]
        length = max(input_ids.shape[1], len(row))
        pad = (0, length - input_ids.shape[1])
        pad_id = self.processing_class.tokenizer.pad_token_id
        row_ids = torch.full((1, length), pad_id, dtype=input_ids.dtype, device=input_ids.device)
        row_ids[0, : len(row)] = torch.tensor(row, device=input_ids.device)
        row_mask = (row_ids != pad_id).to(attention_mask.dtype)
        row_mask[0, : len(row)] = 1
        return {
            **inputs,
            "input_ids": torch.cat([torch.nn.functional.pad(input_ids, pad, value=pad_id), row_ids]),
            "attention_mask": torch.cat([torch.nn.functional.pad(attention_mask, pad, value=0), row_mask]),
            "labels": torch.cat([torch.nn.functional.pad(labels, pad, value=-100), torch.full_like(row_ids, -100)]),
        }

    def drop_conditions(self, conditions: torch.Tensor, unconditional: torch.Tensor) -> torch.Tensor:
        """
        Replaces each dream block's `conditions` by `unconditional` (`(1, num_dream_queries, condition_dim)`) with
        probability `condition_dropout`, drawn from the seed, the process, the step and the micro-batch.
        """
        generator = torch.Generator().manual_seed(
            derived_seed(self.args.seed, self.args.process_index, self.state.global_step, self.micro_batch_index)
        )
        self.micro_batch_index += 1
        dropped = torch.rand(conditions.shape[0], generator=generator) < self.condition_dropout
        return torch.where(dropped.to(conditions.device)[:, None, None], unconditional, conditions)

    def diffusion_loss_sum(self, conditions: torch.Tensor | None, pixel_values: torch.Tensor | None) -> torch.Tensor:
        """Sum over the dream blocks of their noise-prediction MSE (0 without dream blocks)."""
        num_conditions = 0 if conditions is None else conditions.shape[0]
        num_targets = 0 if pixel_values is None else pixel_values.shape[0]
        if num_conditions != num_targets:
            raise ValueError(f"The batch holds {num_conditions} dream block(s) but {num_targets} diffusion target(s)")
        if not num_targets:
            return torch.zeros((), device=self.args.device)
        with self.accelerator.autocast():
            return self.diffusion_objective(conditions, pixel_values).sum()

    def record_loss_sums(self, sums: dict[str, torch.Tensor], counts: dict[str, int]):
        """Adds a micro-batch's loss sums and item counts to what the next log averages."""
        for name in LOSS_PARTS:
            logged = self.logged_sums[name]
            logged[0] += sums[name].detach().float().to(logged.device)
            logged[1] += counts[name]

    def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
        """
        Adds the mean `lm_loss` and `diffusion_loss` since the last log to the training logs and, on a
        [`DocumentStream`], the documents read, truncated and skipped (by reason) so far, summed over processes
        (each process logs its own counts when they change).
        """
        if "loss" in logs:
            for name in LOSS_PARTS:
                total, count = self.accelerator.reduce(self.logged_sums[name], reduction="sum").tolist()
                if count:
                    logs[f"{name}_loss"] = total / count
                self.logged_sums[name].zero_()
            if self.stream_loader is not None:
                logs.update(self.record_counts())
        super().log(logs, start_time)

    def record_counts(self) -> dict[str, int]:
        """The stream's counts (documents, truncated, each skip reason), logged per process and summed."""
        local = skipped_counts(self.stream_loader.state_dict())
        if dict(local) != self.logged_counts:
            self.logged_counts = dict(local)
            skipped = {reason: count for reason, count in local.items() if reason not in ("documents", "truncated") and count}
            logger.info("process %d: %d document(s), %d truncated, skipped %s", self.args.process_index,
                        local["documents"], local["truncated"], skipped or "none")
        vector = torch.tensor([local[name] for name in COUNTED], device=self.args.device)
        summed = dict(zip(COUNTED, self.accelerator.reduce(vector, reduction="sum").tolist()))
        counts = {"documents": summed.pop("documents"), "truncated": summed.pop("truncated")}
        counts.update({f"skipped_{reason.replace(' ', '_')}": count for reason, count in summed.items() if count})
        return counts

    def train(self, resume_from_checkpoint: str | bool | None = None, **kwargs):
        """
        [`transformers.Trainer.train`], with checkpoints that appear only once complete: `resume_from_checkpoint=True`
        picks the newest complete checkpoint of `args.output_dir`, staging folders of killed saves are removed, and a
        run resumed from a checkpoint at `max_steps` or later trains no further. Logs the engine, the number of
        processes, the precision and the batch sizes first.

        Raises:
            `ValueError`: when `resume_from_checkpoint=True` and `args.output_dir` holds no complete checkpoint, or
                when `args.fsdp` asks for FSDP and accelerate runs without it.
        """
        self.check_fsdp_is_running()
        self.remove_checkpoint_staging_folders()
        if resume_from_checkpoint is True:
            resume_from_checkpoint = latest_complete_checkpoint(self.args.output_dir)
            if resume_from_checkpoint is None:
                raise ValueError(f"{self.args.output_dir} holds no complete checkpoint to resume from")
        resume_from_checkpoint = str(resume_from_checkpoint) if resume_from_checkpoint else None
        self.resume_checkpoint = resume_from_checkpoint
        self.resumes_a_finished_run = self.checkpoint_reached_max_steps(resume_from_checkpoint)
        if isinstance(self.train_dataset, DocumentStream):
            self.args.ignore_data_skip = True  # a stream resumes from its saved state, without replaying batches
        self.log_run_setup()
        return super().train(resume_from_checkpoint=resume_from_checkpoint, **kwargs)

    def check_fsdp_is_running(self):
        """
        Raises a `ValueError` when `args.fsdp` asks for FSDP but the accelerator runs without it: accelerate enables
        its FSDP plugin only on accelerator devices, so on CPU the run would silently replicate the whole model.
        """
        if self.args.fsdp and not self.is_fsdp_enabled:
            raise ValueError(
                f"FSDP was requested (fsdp={self.args.fsdp!r}) but accelerate runs "
                f"{self.accelerator.distributed_type.value} without FSDP (it enables FSDP only on accelerator devices); "
                "on CPU, shard the model at load time with `from_pretrained(distributed_config=...)`"
            )

    def checkpoint_reached_max_steps(self, checkpoint: str | None) -> bool:
        if checkpoint is None or self.args.max_steps <= 0:
            return False
        state = TrainerState.load_from_json(os.path.join(checkpoint, TRAINER_STATE_NAME))
        if state.global_step < self.args.max_steps:
            return False
        logger.info("%s is at step %d of max_steps %d: nothing left to train", checkpoint, state.global_step,
                    self.args.max_steps)
        return True

    def get_train_dataloader(self):
        """
        The Trainer's dataloader, or for a [`DocumentStream`] a torchdata `StatefulDataLoader` over this process's
        part of the stream, restored from the resumed checkpoint's data state; none when a resumed run has nothing
        left to train.
        """
        if self.resumes_a_finished_run:
            return []
        if not isinstance(self.train_dataset, DocumentStream):
            return super().get_train_dataloader()
        from torchdata.stateful_dataloader import StatefulDataLoader

        args = self.args
        workers = args.dataloader_num_workers
        self.stream_loader = StatefulDataLoader(
            self.train_dataset.split(args.process_index, args.world_size),
            batch_size=self._train_batch_size,
            collate_fn=self.data_collator,
            num_workers=workers,
            pin_memory=args.dataloader_pin_memory,
            prefetch_factor=args.dataloader_prefetch_factor if workers else None,
            persistent_workers=args.dataloader_persistent_workers and workers > 0,
        )
        if self.resume_checkpoint is not None:
            self.stream_loader.load_state_dict(self.load_data_state(Path(self.resume_checkpoint)))
        return self.stream_loader

    def data_state_file(self, checkpoint: Path) -> Path:
        return checkpoint / DATA_STATE_NAME.format(rank=self.args.process_index)

    def load_data_state(self, checkpoint: Path) -> dict:
        path = self.data_state_file(checkpoint)
        if not path.is_file():
            raise ValueError(
                f"{checkpoint} has no {path.name}: it was not written by a run on a DocumentStream with "
                f"{self.args.world_size} process(es)"
            )
        return json.loads(path.read_text())

    def engine_name(self) -> str:
        """The engine that runs the model: DeepSpeed ZeRO-n, FSDP1/2, DDP or a single process."""
        if self.is_deepspeed_enabled:
            return f"DeepSpeed ZeRO-{self.accelerator.state.deepspeed_plugin.zero_stage}"
        if self.is_fsdp_enabled:
            return f"FSDP{self.accelerator.state.fsdp_plugin.fsdp_version}"
        if self.is_distributed_loading_by_transformers:
            return "FSDP2 (sharded by transformers at load time)"
        return "DDP" if self.args.world_size > 1 else "a single process"

    def precision_name(self) -> str:
        """The training precision: bf16 or fp16 mixed precision, or fp32."""
        return "bf16 mixed precision" if self.args.bf16 else "fp16 mixed precision" if self.args.fp16 else "fp32"

    def training_settings(self) -> dict:
        """
        The settings of this run, as the saved model card states them: the `run_settings` given (stage, LoRA rank,
        data sources; those that are `None` left out), then the optimizer steps done, peak learning rate, batch size per device, gradient
        accumulation, precision, saved dtype, seed, number of processes and engine.
        """
        args = self.args
        return {
            **{name: value for name, value in self.run_settings.items() if value is not None},
            "steps": self.state.global_step,
            "learning_rate": args.learning_rate,
            "batch_size_per_device": args.per_device_train_batch_size,
            "gradient_accumulation_steps": args.gradient_accumulation_steps,
            "precision": self.precision_name(),
            "saved_dtype": str(self.save_dtype).removeprefix("torch."),
            "seed": args.seed,
            "world_size": args.world_size,
            "engine": self.engine_name(),
        }

    def log_run_setup(self):
        args = self.args
        logger.info(
            "Training with %s on %d process(es), %s; per process %d document(s) x %d accumulation step(s), "
            "%d document(s) per optimizer step in all",
            self.engine_name(), args.world_size, self.precision_name(), args.per_device_train_batch_size,
            args.gradient_accumulation_steps,
            args.per_device_train_batch_size * args.gradient_accumulation_steps * args.world_size,
        )

    def _get_output_dir(self, trial) -> str:
        """Where the Trainer writes checkpoints: the staging folder while one is being written."""
        if self.checkpoint_staging is not None:
            return str(self.checkpoint_staging)
        return super()._get_output_dir(trial)

    def _save_checkpoint(self, model, trial):
        """
        Writes `checkpoint-<step>` in the staging folder `.checkpoint-<step>.partial` beside it (every process writes
        its part there), then moves it in once complete: a checkpoint folder is complete or absent.
        """
        run_dir = Path(super()._get_output_dir(trial))
        name = f"{PREFIX_CHECKPOINT_DIR}-{self.state.global_step}"
        self.checkpoint_staging = run_dir / f".{name}.partial"
        if self.args.should_save:
            shutil.rmtree(self.checkpoint_staging, ignore_errors=True)
        self.accelerator.wait_for_everyone()
        try:
            super()._save_checkpoint(model, trial)
            if self.stream_loader is not None:
                state = json.dumps(self.stream_loader.state_dict())
                self.data_state_file(self.checkpoint_staging / name).write_text(state)
            self.accelerator.wait_for_everyone()
            if self.args.should_save:
                self.move_checkpoint_in(self.checkpoint_staging / name, run_dir / name)
        finally:
            if self.args.should_save:
                shutil.rmtree(self.checkpoint_staging, ignore_errors=True)
            self.checkpoint_staging = None
        self.accelerator.wait_for_everyone()

    def move_checkpoint_in(self, written: Path, final: Path):
        staged_prefix = str(written)
        if self.state.best_model_checkpoint and self.state.best_model_checkpoint.startswith(staged_prefix):
            self.state.best_model_checkpoint = str(final) + self.state.best_model_checkpoint[len(staged_prefix):]
        shutil.rmtree(final, ignore_errors=True)  # the same step saved again
        os.replace(written, final)
        rotate_checkpoints(
            output_dir=str(final.parent),
            save_total_limit=self.args.save_total_limit,
            best_model_checkpoint=self.state.best_model_checkpoint,
            use_mtime=True,
        )

    def remove_checkpoint_staging_folders(self):
        """Removes what killed checkpoint saves left in the output folder (on the process that saves)."""
        output_dir = Path(self.args.output_dir)
        if self.args.should_save and output_dir.is_dir():
            for folder in output_dir.iterdir():
                if CHECKPOINT_STAGING_PATTERN.match(folder.name):
                    shutil.rmtree(folder, ignore_errors=True)
        self.accelerator.wait_for_everyone()

    def full_state_dict(self) -> dict[str, torch.Tensor]:
        """
        The model's complete state dict, gathered from every process whatever the engine shards (ZeRO-3, FSDP with
        any state-dict type, a model sharded by transformers), on CPU, in `save_dtype`; empty on the processes that
        do not save. Every process must call it.
        """
        if self.is_deepspeed_enabled and self.accelerator.state.deepspeed_plugin.zero_stage == 3:
            state_dict = self.gathered_zero3_state_dict()
        elif self.is_distributed_loading_by_transformers:
            from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

            options = StateDictOptions(full_state_dict=True, cpu_offload=True)
            state_dict = get_model_state_dict(self.model, options=options)
        else:
            state_dict = self.accelerator.get_state_dict(self.model_wrapped)
        if not self.args.should_save:
            return {}
        return {
            name: tensor.detach().to("cpu", self.save_dtype if tensor.is_floating_point() else None)
            for name, tensor in state_dict.items()
        }

    def gathered_zero3_state_dict(self) -> dict[str, torch.Tensor]:
        """The unwrapped model's state dict under ZeRO-3, its parameters gathered one module at a time."""
        import deepspeed

        model = self.accelerator.unwrap_model(self.model_wrapped)
        state_dict = {}
        for prefix, module in model.named_modules():
            parameters = dict(module.named_parameters(prefix=prefix, recurse=False))
            with deepspeed.zero.GatheredParameters(list(parameters.values()), modifier_rank=None):
                if self.args.should_save:
                    state_dict.update({name: value.detach().to("cpu", copy=True) for name, value in parameters.items()})
        persistent = model.state_dict().keys()
        state_dict.update({name: buffer for name, buffer in model.named_buffers() if name in persistent})
        return state_dict

    def save_pretrained(self, output_dir: str | os.PathLike | None = None):
        """
        Saves the trained model so that it loads on its own (on the main process): a full model becomes a
        [`DreamLLMPipeline`] folder (model and processor at the top, `unet/`, `vae/`, `scheduler/` and
        `model_index.json` beside them); a PEFT model becomes an adapter folder with the processor and a model card,
        for `PeftModel.from_pretrained` or `model.load_adapter`.

        The files are written to a staging folder beside `output_dir` and moved in once complete, the files that make
        the folder loadable last: a failed or interrupted save never leaves a half-written model, and the Trainer's
        checkpoints in `output_dir` stay.
        """
        output_dir = Path(output_dir or self.args.output_dir).absolute()
        staging = staging_folder(output_dir)
        if self.args.should_save:
            shutil.rmtree(staging, ignore_errors=True)  # left by a save that was killed
        self.accelerator.wait_for_everyone()
        try:
            state_dict = self.full_state_dict()
            self._save(str(staging), state_dict=state_dict)
            if self.args.should_save:
                (staging / TRAINING_ARGS_NAME).unlink(missing_ok=True)  # a pickle naming local paths; checkpoints keep it
                self.check_saved_weights(staging, state_dict)
                self.save_loading_files(staging, output_dir)
                commit_model_files(staging, output_dir)
        finally:
            if self.args.should_save:
                shutil.rmtree(staging, ignore_errors=True)
        self.accelerator.wait_for_everyone()

    def check_saved_weights(self, folder: Path, state_dict: dict[str, torch.Tensor]):
        """
        Raises a `RuntimeError` unless `folder` holds safetensors weights for the model (an adapter's for a PEFT
        model) in `save_dtype`: a save never reports success with weights missing.
        """
        from safetensors import safe_open

        files = sorted(folder.glob("*.safetensors"))
        saved = {}
        for file in files:
            with safe_open(file, "pt") as weights:
                saved.update({name: weights.get_slice(name).get_dtype() for name in weights.keys()})
        model = self.accelerator.unwrap_model(self.model)
        if isinstance(model, PeftModel):
            expected = {name for name, parameter in model.named_parameters() if parameter.requires_grad}
            missing = [] if saved else sorted(expected)
        else:
            expected = {name.replace(FSDP1_WRAPPER_PREFIX, "") for name, _ in model.named_parameters()}
            missing = sorted(expected - saved.keys())
        if missing:
            raise RuntimeError(
                f"Saving to {folder} wrote {len(saved)} tensor(s) but the model has {len(missing)} more, e.g. "
                f"{missing[:3]}; the engine returned a state dict of {len(state_dict)} tensor(s)"
            )
        wrong_dtype = sorted(name for name, dtype in saved.items() if dtype in ("F32", "BF16", "F16")
                             and dtype != {torch.float32: "F32", torch.bfloat16: "BF16", torch.float16: "F16"}[self.save_dtype])
        if wrong_dtype:
            raise RuntimeError(f"Saving to {folder} wrote {wrong_dtype[:3]} in another dtype than {self.save_dtype}")

    def save_loading_files(self, folder: Path, final_dir: Path):
        """
        Adds what loading the model saved in `folder` (bound for `final_dir`) needs beside its weights, and its model
        card with the run's [`~DreamLLMTrainer.training_settings`]: an adapter's card, or the pipeline's diffusion
        components and card.
        """
        model = self.accelerator.unwrap_model(self.model)
        training = self.training_settings()
        if isinstance(model, PeftModel):
            base_model = model.peft_config[model.active_adapter].base_model_name_or_path
            remove_local_base_model(folder)
            write_adapter_model_card(folder, base_model, repo_id=final_dir.name, training=training)
        else:
            self.save_diffusion_components(model, folder)
            card = pipeline_model_card(final_dir.name, base_model=model.name_or_path, training=training)
            card.save(folder / "README.md")

    def save_diffusion_components(self, model, output_dir: Path):
        """Writes `unet/`, `vae/`, `scheduler/` and the pipeline's `model_index.json` beside a saved model."""
        objective = self.diffusion_objective
        objective.unet.save_pretrained(output_dir / "unet")
        objective.vae.save_pretrained(output_dir / "vae")
        objective.scheduler.save_pretrained(output_dir / "scheduler")
        pipeline = DreamLLMPipeline(
            model=model,
            processor=self.processing_class,
            unet=objective.unet,
            vae=objective.vae,
            scheduler=objective.scheduler,
        )
        pipeline.save_config(output_dir)
        remove_local_origins(output_dir)
        write_loader_files(output_dir)


__all__ = ["DreamLLMTrainer"]
