"""`DreamLLMTrainer`: transformers' `Trainer` with DreamLLM's two-part objective.

Being a plain `Trainer` subclass, it runs under `accelerate launch` with DDP, FSDP or DeepSpeed configurations, and
keeps the Trainer's gradient accumulation, mixed precision, gradient checkpointing, logging and checkpoint resumption.
"""

import os
import shutil
from pathlib import Path

import torch
from diffusers import AutoencoderKL, UNet2DConditionModel
from diffusers.schedulers.scheduling_utils import SchedulerMixin
from peft import PeftModel
from transformers import Trainer

from dreamllm.file_utils import commit_model_files, staging_folder
from dreamllm.pipelines import DreamLLMPipeline

from .diffusion import DiffusionObjective
from .lora import write_adapter_model_card

LOSS_PARTS = ("lm", "diffusion")


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
            `drop_prob`; the released models were trained without it. Its draws follow `args.seed`.
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
        **kwargs,
    ):
        if not 0.0 <= condition_dropout <= 1.0:
            raise ValueError(f"condition_dropout must be in [0, 1], got {condition_dropout}")
        super().__init__(model=model, args=args, **kwargs)
        self.condition_dropout = condition_dropout
        self.dropout_generator = torch.Generator().manual_seed(self.args.seed + self.args.process_index)
        self.diffusion_objective = DiffusionObjective(unet, vae, noise_scheduler).to(self.args.device, self.model.dtype)
        self.step_normalizers: dict[str, torch.Tensor] | None = None
        self.logged_sums = {name: torch.zeros(2, device=self.args.device) for name in LOSS_PARTS}

    @property
    def dreamllm_config(self):
        return self.accelerator.unwrap_model(self.model).config

    def get_batch_samples(self, epoch_iterator, num_batches: int, device: torch.device):
        """Collects the micro-batches of one optimizer step and counts their label tokens and dream blocks."""
        batch_samples, num_items_in_batch = super().get_batch_samples(epoch_iterator, num_batches, device)
        counts = torch.tensor([sum(self.count_loss_items(batch)[name] for batch in batch_samples) for name in LOSS_PARTS])
        counts = self.accelerator.reduce(counts.to(device), reduction="sum")
        self.step_normalizers = dict(zip(LOSS_PARTS, counts))
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
        outputs = model(**inputs, num_items_in_batch=normalizers["lm"])
        lm_sum = outputs.loss * normalizers["lm"]
        conditions = self.drop_conditions(model, outputs.dream_conditions) if model.training else outputs.dream_conditions
        diffusion_sum = self.diffusion_loss_sum(conditions, diffusion_pixel_values)
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

    def drop_conditions(self, model, conditions: torch.Tensor | None) -> torch.Tensor | None:
        """Replaces each dream block's conditions by the unconditional ones with probability `condition_dropout`."""
        if conditions is None or not self.condition_dropout:
            return conditions
        dropped = torch.rand(conditions.shape[0], generator=self.dropout_generator) < self.condition_dropout
        if not dropped.any():
            return conditions
        unconditional = self.accelerator.unwrap_model(model).get_unconditional_dream_conditions()
        return torch.where(dropped.to(conditions.device)[:, None, None], unconditional.to(conditions.dtype), conditions)

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
        """Adds the mean `lm_loss` and `diffusion_loss` since the last log to the training logs."""
        if "loss" in logs:
            for name in LOSS_PARTS:
                total, count = self.accelerator.reduce(self.logged_sums[name], reduction="sum").tolist()
                if count:
                    logs[f"{name}_loss"] = total / count
                self.logged_sums[name].zero_()
        super().log(logs, start_time)

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
            self.save_model(str(staging))
            if self.args.should_save:
                self.save_loading_files(staging, output_dir)
                commit_model_files(staging, output_dir)
        finally:
            if self.args.should_save:
                shutil.rmtree(staging, ignore_errors=True)

    def save_loading_files(self, folder: Path, final_dir: Path):
        """
        Adds what loading the model saved in `folder` (bound for `final_dir`) needs beside its weights: an adapter's
        model card, or the pipeline's diffusion components.
        """
        model = self.accelerator.unwrap_model(self.model)
        if isinstance(model, PeftModel):
            base_model = model.peft_config[model.active_adapter].base_model_name_or_path
            write_adapter_model_card(folder, base_model, repo_id=str(final_dir))
        else:
            self.save_diffusion_components(model, folder)

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


__all__ = ["DreamLLMTrainer"]
