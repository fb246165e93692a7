"""DreamLLMPipeline: free-form interleaved documents, text-to-image and image comprehension with one DreamLLM."""

import importlib.resources
import inspect
import json
import math
import os
import re
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import PIL.Image
import torch
from diffusers import AutoencoderKL, DDPMScheduler, DiffusionPipeline, UNet2DConditionModel
from diffusers.callbacks import MultiPipelineCallbacks, PipelineCallback
from diffusers.image_processor import VaeImageProcessor
from diffusers.schedulers.scheduling_utils import SchedulerMixin
from diffusers.utils import BaseOutput
from diffusers.utils.torch_utils import randn_tensor
from huggingface_hub import snapshot_download
from transformers import DynamicCache, GenerationConfig, LogitsProcessorList, StoppingCriteriaList
from transformers.feature_extraction_utils import BatchFeature
from transformers.generation.streamers import BaseStreamer

import diffusers
from dreamllm.file_utils import atomic_directory, remove_local_origins
from dreamllm.hub_files import write_loader_files
from dreamllm.modeling_dreamllm import DreamLLMForCausalLM
from dreamllm.modeling_dreamllm.modeling_dreamllm import CACHE_ARGUMENT, token_id_list
from dreamllm.processing import DreamLLMProcessor
from dreamllm.processing.images import load_image

from .hub import pipeline_model_card, upload_folder_with_card
from .interleaved import DocumentBatch, DocumentRow, DocumentRun, ForwardChunk
from .lora import DreamLLMLoraLoaderMixin
from .streaming import (
    DocumentDone,
    ImageDone,
    ImagePreview,
    ImageStarted,
    SegmentDecoder,
    StreamerFeed,
    StreamEvent,
    TextDelta,
)
from .loading import COMPONENTS, WEIGHTED_COMPONENTS, LoadingOptions, check_saved_files, components_with_variant

HUB_REPO_ID = re.compile(r"[\w.-]+(/[\w.-]+)?")
TOY_MODEL_PATH = Path(str(importlib.resources.files("dreamllm") / "toy_model"))
"""The toy-world DreamLLM shipped inside the package, used when no model is named (see `python -m dreamllm.toy_world.build_toy_model`)."""
DIFFUSION_COMPONENTS = {"unet": UNet2DConditionModel, "vae": AutoencoderKL}
OUTPUT_TYPES = ("pil", "np", "pt", "latent")
DEFAULT_MAX_NEW_TOKENS = 256
MAX_IMAGE_SIZE = 4096
"""The largest `height` / `width` the pipeline draws (8x DreamLLM's 512, 4x the 1024 of SDXL-class UNets)."""
SCHEDULER_INTERFACE = ("set_timesteps", "init_noise_sigma", "scale_model_input", "step")
UNET_PREDICTION_TYPES = ("epsilon", "v_prediction", "sample")


def default_scheduler() -> DDPMScheduler:
    """The sampler of the original DreamLLM: DDPM with the Stable Diffusion 2.1-base settings."""
    return DDPMScheduler(
        num_train_timesteps=1000,
        beta_start=0.00085,
        beta_end=0.012,
        beta_schedule="scaled_linear",
        prediction_type="epsilon",
        clip_sample=False,
        steps_offset=1,
        timestep_spacing="leading",
    )


@dataclass
class DreamLLMPipelineOutput(BaseOutput):
    """
    Output of [`DreamLLMPipeline`].

    Args:
        documents (`list[list[str | PIL.Image.Image]]`, *optional*):
            One document per prompt: text segments and images in reading order (interleaved generation).
        text (`list[str]`, *optional*):
            The text of each document, with `<image>` where its images stand.
        images (`list[PIL.Image.Image]` or `np.ndarray` or `torch.Tensor`, *optional*):
            Every generated image, flat as in diffusers' outputs: for interleaved generation all images of all
            documents, in reading order, prompt by prompt (the images of one document are in its `documents` entry,
            see [`document_images`]); for text-to-image `batch * num_images_per_prompt` images. PIL images are a
            list; `"np"`, `"pt"` and `"latent"` outputs are one stacked array or tensor (an empty list when no
            document holds an image).
    """

    documents: list[list[str | PIL.Image.Image]] | None = None
    text: list[str] | None = None
    images: list[PIL.Image.Image] | np.ndarray | torch.Tensor | None = None


@dataclass(frozen=True)
class DenoisingStep:
    """
    The state after one denoising step.

    Args:
        number (`int`): The step, counted from 1.
        latents (`torch.Tensor`): The latents after the step.
        estimate (`torch.Tensor`): The scheduler's estimate of the clean latents (`pred_original_sample`), or the
            latents for schedulers that give none.
    """

    number: int
    latents: torch.Tensor
    estimate: torch.Tensor


class DreamLLMPipeline(DreamLLMLoraLoaderMixin, DiffusionPipeline):
    r"""
    DreamLLM as a diffusers pipeline: the language model writes text and decides where images go; each image it
    starts is drawn by a Stable Diffusion UNet conditioned on the model's dream-query states.

    Args:
        model ([`DreamLLMForCausalLM`]): The multimodal language model.
        processor ([`DreamLLMProcessor`]): Its tokenizer and image processor.
        unet ([`UNet2DConditionModel`]): The denoiser; its `cross_attention_dim` equals `model.config.condition_dim`.
        vae ([`AutoencoderKL`]): Decodes latents to images.
        scheduler ([`SchedulerMixin`]): Any diffusers scheduler; DreamLLM's own is [`default_scheduler`].

    Calling the pipeline writes free-form documents of text and images ([`~DreamLLMPipeline.__call__`]);
    [`~DreamLLMPipeline.text_to_image`] draws one image per prompt as the original DreamLLM does.

    The saved layout serves every entry point without duplicated weights: the model and processor files sit at the
    top of the folder (so `AutoModelForCausalLM`, `AutoProcessor` and `transformers.pipeline` load it), and `unet/`,
    `vae/`, `scheduler/` and `model_index.json` sit beside them.

    Example:

    ```python
    >>> import torch
    >>> from dreamllm import DreamLLMPipeline
    >>> pipe = DreamLLMPipeline.from_pretrained("path/to/converted-dreamllm")
    >>> output = pipe("Write a short illustrated story about a fox.", generator=torch.Generator().manual_seed(0))
    >>> output.documents[0]  # ["Once upon a time ...", <PIL.Image.Image>, "The fox ...", ...]
    >>> cat = pipe.text_to_image("A photo of a cat", generator=torch.Generator().manual_seed(0)).images[0]
    ```
    """

    model_cpu_offload_seq = "model->unet->vae"
    _callback_tensor_inputs = ["latents", "prompt_embeds", "negative_prompt_embeds"]

    def __init__(
        self,
        model: DreamLLMForCausalLM,
        processor: DreamLLMProcessor,
        unet: UNet2DConditionModel,
        vae: AutoencoderKL,
        scheduler: SchedulerMixin,
    ):
        super().__init__()
        check_components(model=model, processor=processor, unet=unet, vae=vae, scheduler=scheduler)
        self.register_modules(model=model, processor=processor, unet=unet, vae=vae, scheduler=scheduler)
        self.vae_scale_factor = 2 ** (len(vae.config.block_out_channels) - 1)
        self.vae_image_processor = VaeImageProcessor(vae_scale_factor=self.vae_scale_factor)
        self.reset_call_state(guidance_scale=1.0)

    def __setattr__(self, name, value):
        if name == "scheduler":
            check_scheduler(value)
        super().__setattr__(name, value)

    def reset_call_state(self, guidance_scale: float):
        """The state the properties report, set at the start of every call: no timesteps run yet, not interrupted."""
        self._guidance_scale = guidance_scale
        self._num_timesteps = 0
        self._interrupt = False
        self._negative_prompt_embeds = None

    @property
    def guidance_scale(self) -> float:
        """The guidance scale of the latest call (1.0 before any)."""
        return self._guidance_scale

    @property
    def do_classifier_free_guidance(self) -> bool:
        """Whether the latest call guides its images (`guidance_scale > 1`)."""
        return self._guidance_scale > 1

    @property
    def num_timesteps(self) -> int:
        """Denoising steps of the latest image drawn in the latest call (0 when it drew none)."""
        return self._num_timesteps

    @property
    def interrupt(self) -> bool:
        """Whether a callback interrupted the latest call."""
        return self._interrupt

    @property
    def context_length(self) -> int:
        """How many positions the language model reads (`text_config.max_position_embeddings`)."""
        return self.model.config.text_config.max_position_embeddings

    @property
    def default_image_size(self) -> tuple[int, int]:
        """`(height, width)` of an image when none is asked for: the UNet's sample size times the VAE factor."""
        sample_size = self.unet.config.sample_size
        height, width = (sample_size, sample_size) if isinstance(sample_size, int) else sample_size
        return height * self.vae_scale_factor, width * self.vae_scale_factor

    # ----------------------------------------------------------------------------------------------------------------
    # Checks shared by both entry points
    # ----------------------------------------------------------------------------------------------------------------

    def check_inputs(
        self,
        num_inference_steps: int,
        guidance_scale: float,
        height: int,
        width: int,
        output_type: str,
        callback_on_step_end_tensor_inputs: list[str] | None,
        generator: torch.Generator | list[torch.Generator] | None,
        batch_size: int,
    ):
        """
        Raises a `ValueError` naming the argument when a diffusion setting cannot be used, and a `TypeError` when the
        scheduler (set by any means) cannot drive the UNet.
        """
        check_scheduler(self.scheduler)
        if not isinstance(num_inference_steps, int) or num_inference_steps < 1:
            raise ValueError(f"num_inference_steps must be a whole number >= 1, got {num_inference_steps!r}")
        if not isinstance(guidance_scale, (int, float)) or not math.isfinite(guidance_scale) or guidance_scale < 0:
            raise ValueError(f"guidance_scale must be a finite number >= 0, got {guidance_scale!r}")
        for name, size in (("height", height), ("width", width)):
            if not isinstance(size, int) or isinstance(size, bool) or size < 1 or size % self.vae_scale_factor:
                raise ValueError(
                    f"{name} must be a positive multiple of the VAE scale factor {self.vae_scale_factor}, got {size!r}"
                )
            if size > MAX_IMAGE_SIZE:
                raise ValueError(f"{name} must be at most {MAX_IMAGE_SIZE} pixels, got {size}")
        if output_type not in OUTPUT_TYPES:
            raise ValueError(f"output_type must be one of {', '.join(OUTPUT_TYPES)}, got {output_type!r}")
        unknown_inputs = set(callback_on_step_end_tensor_inputs or ()) - set(self._callback_tensor_inputs)
        if unknown_inputs:
            raise ValueError(
                f"callback_on_step_end_tensor_inputs may only name {self._callback_tensor_inputs}, "
                f"got {sorted(unknown_inputs)}"
            )
        if isinstance(generator, list) and len(generator) != batch_size:
            raise ValueError(f"{len(generator)} generators were given for a batch of {batch_size}; pass one per row")

    def check_prompt_length(self, input_ids_length: int, positions_needed_after: int = 0):
        """Raises a `ValueError` when a prompt (plus what must follow it) does not fit the model's context."""
        if input_ids_length + positions_needed_after > self.context_length:
            needed = f" plus {positions_needed_after} for the image to draw" if positions_needed_after else ""
            raise ValueError(
                f"The prompt is {input_ids_length} tokens long (images count as their blocks){needed}, but the "
                f"model reads at most {self.context_length} positions; shorten the prompt"
            )

    # ----------------------------------------------------------------------------------------------------------------
    # Diffusion: conditions, latents, denoising, decoding
    # ----------------------------------------------------------------------------------------------------------------

    def encode_prompt(
        self,
        prompt: str | list[str] | None,
        device: torch.device,
        num_images_per_prompt: int,
        do_classifier_free_guidance: bool,
        negative_prompt: str | list[str] | None = None,
        prompt_embeds: torch.Tensor | None = None,
        negative_prompt_embeds: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """
        The UNet conditions of text-to-image, computed as the original DreamLLM does: the raw prompt (BOS, no chat
        template) in one pass, then the dream block on its cache. The unconditional condition is the same on the
        negative prompt, or on the empty prompt (BOS alone) when there is none.

        Args:
            prompt (`str` or `list[str]`, *optional*): The prompts; or pass `prompt_embeds`.
            device (`torch.device`): Where to compute.
            num_images_per_prompt (`int`): Each condition is repeated this many times, prompt by prompt.
            do_classifier_free_guidance (`bool`): Whether to compute the unconditional condition too.
            negative_prompt (`str` or `list[str]`, *optional*): One for all prompts, or one per prompt.
            prompt_embeds, negative_prompt_embeds (`torch.Tensor` of shape `(batch, num_dream_queries, condition_dim)`,
                *optional*): Ready-made conditions.

        Returns:
            `(prompt_embeds, negative_prompt_embeds)`, each `(batch * num_images_per_prompt, num_dream_queries,
            condition_dim)` in the UNet's dtype; `negative_prompt_embeds` is `None` without guidance.
        """
        for name, embeds in (("prompt_embeds", prompt_embeds), ("negative_prompt_embeds", negative_prompt_embeds)):
            if embeds is not None:
                self.check_condition(name, embeds)
        if prompt_embeds is None:
            prompt_embeds = self.dream_conditions_of_texts(prompt, device)
        batch_size = prompt_embeds.shape[0]
        if negative_prompt_embeds is not None and negative_prompt_embeds.shape[0] not in (1, batch_size):
            raise ValueError(f"negative_prompt_embeds holds {negative_prompt_embeds.shape[0]} conditions for "
                             f"{batch_size} prompts")
        if do_classifier_free_guidance and negative_prompt_embeds is None:
            negative_prompt_embeds = self.encode_negative_prompt(negative_prompt, batch_size, device)
        unet_dtype = self.unet.dtype
        if do_classifier_free_guidance:
            negative_prompt_embeds = negative_prompt_embeds.to(device, unet_dtype)
            negative_prompt_embeds = negative_prompt_embeds.repeat_interleave(num_images_per_prompt, 0)
        else:
            negative_prompt_embeds = None
        prompt_embeds = prompt_embeds.to(device, unet_dtype).repeat_interleave(num_images_per_prompt, 0)
        return prompt_embeds, negative_prompt_embeds

    def check_condition(self, name: str, embeds: torch.Tensor):
        """Raises a `ValueError` unless ready-made conditions are finite, `(batch, num_dream_queries, condition_dim)`."""
        config = self.model.config
        if not isinstance(embeds, torch.Tensor) or embeds.ndim != 3 or tuple(embeds.shape[1:]) != (
            config.num_dream_queries, config.condition_dim
        ):
            shape = tuple(embeds.shape) if isinstance(embeds, torch.Tensor) else type(embeds).__name__
            raise ValueError(f"{name} must have shape (batch, {config.num_dream_queries}, {config.condition_dim}), "
                             f"got {shape}")
        check_finite(name, embeds)

    def encode_negative_prompt(
        self, negative_prompt: str | list[str] | None, batch_size: int, device: torch.device
    ) -> torch.Tensor:
        """
        The unconditional condition of classifier-free guidance for `batch_size` rows: the dream block after the
        negative prompt (one for all rows, or one per row), or after BOS alone when there is none.
        """
        if negative_prompt is None:
            return self.model.get_unconditional_dream_conditions(batch_size)
        negative_prompts = [negative_prompt] if isinstance(negative_prompt, str) else list(negative_prompt)
        if len(negative_prompts) not in (1, batch_size):
            raise ValueError(f"Got {len(negative_prompts)} negative prompts for {batch_size} prompts")
        return self.dream_conditions_of_texts(negative_prompts, device).expand(batch_size, -1, -1)

    def dream_conditions_of_texts(self, texts: str | list[str], device: torch.device) -> torch.Tensor:
        """Dream conditions after raw prompts (BOS + text), with a clear error when a prompt overflows the context."""
        inputs = self.processor(text=texts, return_tensors="pt").to(device)
        self.check_prompt_length(inputs.input_ids.shape[1], self.model.config.num_dream_queries + 2)
        return self.model.get_dream_conditions(inputs.input_ids, inputs.attention_mask)

    def prepare_latents(
        self,
        batch_size: int,
        height: int,
        width: int,
        dtype: torch.dtype,
        device: torch.device,
        generator: torch.Generator | list[torch.Generator] | None,
        latents: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Initial noise `(batch_size, latent_channels, height / f, width / f)`: one draw of `generator`, or `latents`."""
        factor = self.vae_scale_factor
        shape = (batch_size, self.unet.config.in_channels, height // factor, width // factor)
        if latents is None:
            latents = randn_tensor(shape, generator=generator, device=device, dtype=dtype)
        elif latents.shape != shape:
            raise ValueError(f"latents must have shape {tuple(shape)}, got {tuple(latents.shape)}")
        else:
            check_finite("latents", latents)
        return latents.to(device, dtype) * self.scheduler.init_noise_sigma

    def prepare_extra_step_kwargs(self, generator: torch.Generator | list[torch.Generator] | None) -> dict:
        """The `generator` for schedulers whose `step` draws noise (DDPM does, at every step)."""
        accepts_generator = "generator" in inspect.signature(self.scheduler.step).parameters
        return {"generator": generator} if accepts_generator else {}

    def denoise(
        self,
        latents: torch.Tensor,
        prompt_embeds: torch.Tensor,
        negative_prompt_embeds: torch.Tensor | None,
        num_inference_steps: int,
        generator: torch.Generator | list[torch.Generator] | None,
        callback_on_step_end: Callable | PipelineCallback | MultiPipelineCallbacks | None,
        callback_on_step_end_tensor_inputs: list[str],
    ) -> torch.Tensor:
        """
        The sampling loop: UNet on `[uncond, cond]` (when guidance is on), `uncond + g * (cond - uncond)`, scheduler
        step. `callback_on_step_end` runs after every step and may replace the tensors it is given; once it sets
        `pipe._interrupt`, the remaining steps are skipped.
        """
        for step in self.denoising_steps(
            latents, prompt_embeds, negative_prompt_embeds, num_inference_steps, generator,
            callback_on_step_end, callback_on_step_end_tensor_inputs,
        ):
            latents = step.latents
        return latents

    def denoising_steps(
        self,
        latents: torch.Tensor,
        prompt_embeds: torch.Tensor,
        negative_prompt_embeds: torch.Tensor | None,
        num_inference_steps: int,
        generator: torch.Generator | list[torch.Generator] | None,
        callback_on_step_end: Callable | PipelineCallback | MultiPipelineCallbacks | None,
        callback_on_step_end_tensor_inputs: list[str],
    ) -> Iterator[DenoisingStep]:
        """[`~DreamLLMPipeline.denoise`], one [`DenoisingStep`] at a time (none for the steps an interrupt skips)."""
        self.scheduler.set_timesteps(num_inference_steps, device=latents.device)
        timesteps = self.scheduler.timesteps
        self._num_timesteps = len(timesteps)
        extra_step_kwargs = self.prepare_extra_step_kwargs(generator)
        with self.progress_bar(total=len(timesteps)) as progress_bar:
            for i, t in enumerate(timesteps):
                if self.interrupt:
                    continue
                latent_model_input = torch.cat([latents] * 2) if self.do_classifier_free_guidance else latents
                latent_model_input = self.scheduler.scale_model_input(latent_model_input, t)
                conditions = prompt_embeds
                if self.do_classifier_free_guidance:
                    conditions = torch.cat([negative_prompt_embeds, prompt_embeds])
                noise_pred = self.unet(latent_model_input, t, encoder_hidden_states=conditions, return_dict=False)[0]
                if self.do_classifier_free_guidance:
                    noise_pred_uncond, noise_pred_cond = noise_pred.chunk(2)
                    noise_pred = noise_pred_uncond + self.guidance_scale * (noise_pred_cond - noise_pred_uncond)
                scheduler_output = self.scheduler.step(noise_pred, t, latents, **extra_step_kwargs)
                latents = scheduler_output.prev_sample

                if callback_on_step_end is not None:
                    callback_kwargs = {}
                    for name in callback_on_step_end_tensor_inputs:
                        callback_kwargs[name] = locals()[name]
                    callback_outputs = callback_on_step_end(self, i, t, callback_kwargs)
                    latents = callback_outputs.pop("latents", latents)
                    prompt_embeds = callback_outputs.pop("prompt_embeds", prompt_embeds)
                    negative_prompt_embeds = callback_outputs.pop("negative_prompt_embeds", negative_prompt_embeds)
                progress_bar.update()
                estimate = getattr(scheduler_output, "pred_original_sample", None)
                yield DenoisingStep(i + 1, latents, latents if estimate is None else estimate)

    def decode_latents(self, latents: torch.Tensor) -> torch.Tensor:
        """VAE-decodes latents (divided by the VAE's scaling factor) to images in [-1, 1], `(batch, 3, H, W)`."""
        latents = latents.to(self.vae.dtype) / self.vae.config.scaling_factor
        return self.vae.decode(latents, return_dict=False)[0]

    def postprocess_images(self, latents: torch.Tensor, output_type: str):
        """
        Latents to the images of `output_type`: PIL images, `np.ndarray` (NHWC in [0, 1]), `torch.Tensor` (NCHW in
        [0, 1]), or the latents themselves.
        """
        if output_type == "latent":
            return latents
        return self.vae_image_processor.postprocess(self.decode_latents(latents), output_type=output_type)

    def resolve_callback_inputs(self, callback_on_step_end, callback_on_step_end_tensor_inputs: list[str]) -> list[str]:
        """The tensor names a callback receives: its own `tensor_inputs` for diffusers' callback classes."""
        if isinstance(callback_on_step_end, (PipelineCallback, MultiPipelineCallbacks)):
            return callback_on_step_end.tensor_inputs
        return callback_on_step_end_tensor_inputs

    # ----------------------------------------------------------------------------------------------------------------
    # Text-to-image
    # ----------------------------------------------------------------------------------------------------------------

    @torch.no_grad()
    def text_to_image(
        self,
        prompt: str | list[str] | None = None,
        negative_prompt: str | list[str] | None = None,
        num_inference_steps: int = 50,
        guidance_scale: float = 7.5,
        generator: torch.Generator | list[torch.Generator] | None = None,
        latents: torch.Tensor | None = None,
        height: int | None = None,
        width: int | None = None,
        num_images_per_prompt: int = 1,
        prompt_embeds: torch.Tensor | None = None,
        negative_prompt_embeds: torch.Tensor | None = None,
        output_type: str = "pil",
        return_dict: bool = True,
        callback_on_step_end: Callable | PipelineCallback | MultiPipelineCallbacks | None = None,
        callback_on_step_end_tensor_inputs: list[str] = ["latents"],
    ) -> DreamLLMPipelineOutput | tuple:
        r"""
        Draws images for text prompts as the original DreamLLM does: the raw prompt (BOS, no chat template) goes
        through the language model, the dream queries run on its cache, and their projected states condition the
        UNet; classifier-free guidance uses the same computation on the negative prompt or on the empty prompt.

        Args:
            prompt (`str` or `list[str]`, *optional*): What to draw; or pass `prompt_embeds`.
            negative_prompt (`str` or `list[str]`, *optional*): What to steer away from (one, or one per prompt).
            num_inference_steps (`int`, defaults to 50): Denoising steps (the official demo used 150).
            guidance_scale (`float`, defaults to 7.5): Classifier-free guidance; off at 1 or below (the official demo
                used 3.5, the COCO evaluation 2.0).
            generator (`torch.Generator` or `list[torch.Generator]`, *optional*): Source of all noise: one generator,
                or one per image (then image i equals a single-image call with generator i).
            latents (`torch.Tensor`, *optional*): Initial noise `(batch * num_images_per_prompt, C, H / f, W / f)`.
            height, width (`int`, *optional*): Image size, a multiple of the VAE scale factor; defaults to the UNet's
                sample size times that factor.
            num_images_per_prompt (`int`, defaults to 1): Images drawn for each prompt.
            prompt_embeds, negative_prompt_embeds (`torch.Tensor`, *optional*): Ready-made conditions
                `(batch, num_dream_queries, condition_dim)`, e.g. from [`~DreamLLMPipeline.encode_prompt`].
            output_type (`str`, defaults to `"pil"`): `"pil"`, `"np"`, `"pt"` or `"latent"`.
            return_dict (`bool`, defaults to `True`): Return a [`DreamLLMPipelineOutput`] rather than `(images,)`.
            callback_on_step_end (`Callable`, *optional*): Called as `callback(pipe, step, timestep, tensors)` after
                every denoising step; the tensors it returns replace the pipeline's. Set `pipe._interrupt = True` in it
                to stop early.
            callback_on_step_end_tensor_inputs (`list[str]`, defaults to `["latents"]`): Tensors the callback gets,
                among `pipe._callback_tensor_inputs`.

        Returns:
            [`DreamLLMPipelineOutput`] with `images` (`batch * num_images_per_prompt` of them, prompt by prompt).

        Raises:
            `ValueError`: on a bad setting (steps < 1, guidance < 0, size not a multiple of the VAE factor, a prompt
            longer than the context, ...).
        """
        callback_on_step_end_tensor_inputs = self.resolve_callback_inputs(
            callback_on_step_end, callback_on_step_end_tensor_inputs
        )
        if (prompt is None) == (prompt_embeds is None):
            raise ValueError("Pass exactly one of prompt or prompt_embeds")
        if prompt is not None and not (isinstance(prompt, str) or (
            isinstance(prompt, (list, tuple)) and prompt and all(isinstance(text, str) for text in prompt)
        )):
            raise ValueError(f"prompt must be a string or a non-empty list of strings, got {prompt!r}")
        if not isinstance(num_images_per_prompt, int) or num_images_per_prompt < 1:
            raise ValueError(f"num_images_per_prompt must be a whole number >= 1, got {num_images_per_prompt!r}")
        default_height, default_width = self.default_image_size
        height = default_height if height is None else height
        width = default_width if width is None else width
        batch_size = prompt_embeds.shape[0] if prompt is None else 1 if isinstance(prompt, str) else len(prompt)
        self.check_inputs(
            num_inference_steps, guidance_scale, height, width, output_type, callback_on_step_end_tensor_inputs,
            generator, batch_size * num_images_per_prompt,
        )
        self.reset_call_state(guidance_scale)
        device = self._execution_device

        prompt_embeds, negative_prompt_embeds = self.encode_prompt(
            prompt, device, num_images_per_prompt, self.do_classifier_free_guidance, negative_prompt,
            prompt_embeds=prompt_embeds, negative_prompt_embeds=negative_prompt_embeds,
        )
        latents = self.prepare_latents(
            prompt_embeds.shape[0], height, width, prompt_embeds.dtype, device, generator, latents
        )
        latents = self.denoise(
            latents, prompt_embeds, negative_prompt_embeds, num_inference_steps, generator,
            callback_on_step_end, callback_on_step_end_tensor_inputs,
        )
        images = self.postprocess_images(latents, output_type)
        self.maybe_free_model_hooks()
        if not return_dict:
            return (images,)
        return DreamLLMPipelineOutput(images=images)

    # ----------------------------------------------------------------------------------------------------------------
    # Interleaved generation
    # ----------------------------------------------------------------------------------------------------------------

    @torch.no_grad()
    def __call__(
        self,
        prompt: str | list[str] | list[dict] | list[list[dict]],
        images=None,
        negative_prompt: str | None = None,
        use_chat_template: bool = True,
        max_images: int = 4,
        num_inference_steps: int = 50,
        guidance_scale: float = 7.5,
        height: int | None = None,
        width: int | None = None,
        generator: torch.Generator | list[torch.Generator] | None = None,
        generation_config: GenerationConfig | None = None,
        logits_processor: LogitsProcessorList | None = None,
        stopping_criteria: StoppingCriteriaList | None = None,
        output_type: str = "pil",
        return_dict: bool = True,
        callback_on_step_end: Callable | PipelineCallback | MultiPipelineCallbacks | None = None,
        callback_on_step_end_tensor_inputs: list[str] = ["latents"],
        streamer: BaseStreamer | None = None,
        image_batch_window: int | None = None,
        **generate_kwargs,
    ) -> DreamLLMPipelineOutput | tuple:
        r"""
        Writes a free-form document of text and images for each prompt.

        The language model decodes on one key/value cache. When a row emits `<dream_start>`, its dream queries and
        `<dream_end>` run on the cache, the image is drawn with classifier-free guidance (the unconditional condition
        is computed once per call), read back through the vision tower as `<im_start>` + features + `<im_end>` in one
        cached pass, and decoding goes on: the prefix is never encoded again. Rows of a batch may draw at different
        steps; with one generator per prompt, rows that start images within `image_batch_window` passes of each other
        have them drawn in one batched denoising loop. Tokens the pipeline inserts itself (`<im_start>`, `<im_patch>`, `<im_end>`, `<dream_end>`, `<image>`,
        `<dream>`, padding) are never sampled.

        Args:
            prompt (`str`, `list[str]`, a conversation or a list of conversations):
                A string becomes one user turn of the chat template (with `use_chat_template`); a conversation is a
                list of `{"role", "content"}` messages whose content items may be `{"type": "image", "image": ...}`.
            images (*optional*):
                Images to read, for string prompts: for one prompt an image or a list of images, for a batch a list
                with one entry (an image, a list, or `None`) per prompt. They fill the prompt's `<image>`
                placeholders, or are shown before its text when it has none.
            negative_prompt (`str`, *optional*):
                Unconditional text of classifier-free guidance for every image (default: the empty prompt, BOS alone).
            use_chat_template (`bool`, defaults to `True`):
                Wrap string prompts in the processor's chat template (Vicuna v1.1); otherwise they are used as is.
            max_images (`int`, defaults to 4):
                The most images one document may hold: once a row has drawn them, `<dream_start>` is masked out of its
                logits and it writes text only. Rows whose context cannot hold another image are masked the same way.
            num_inference_steps, guidance_scale, height, width:
                As for [`~DreamLLMPipeline.text_to_image`], for every drawn image.
            generator (`torch.Generator` or `list[torch.Generator]`, *optional*):
                The source of all randomness (sampled tokens and image noise): one generator for the batch, or one per
                prompt, in which case each row writes the document it writes alone with its generator (up to float
                rounding: padding changes the order of some sums).
            generation_config, logits_processor, stopping_criteria, **generate_kwargs:
                Decoding settings as for `model.generate` (`max_new_tokens`, `do_sample`, `temperature`, `top_k`,
                `top_p`, `repetition_penalty`, `eos_token_id`, `stop_strings`, ...). `max_new_tokens` (default 256)
                counts sampled tokens per row; inserted blocks do not count. The processors see every row's ids so
                far (prompt, text and blocks, left-padded) and run after the pipeline's own mask, which they should
                not undo. Beam search is not supported.
            output_type (`str`, defaults to `"pil"`):
                Type of the images in the documents: `"pil"`, `"np"`, `"pt"` or `"latent"`.
            return_dict (`bool`, defaults to `True`):
                Return a [`DreamLLMPipelineOutput`] rather than `(documents, text, images)`.
            callback_on_step_end, callback_on_step_end_tensor_inputs:
                As for [`~DreamLLMPipeline.text_to_image`], at every denoising step of every image. Interrupting ends
                the images being drawn and every document.
            streamer (`BaseStreamer`, *optional*):
                A transformers streamer (`TextStreamer`, `TextIteratorStreamer`, ...) for a single prompt: it gets the
                prompt ids, then every sampled token as it is written, and `<image>` for each drawn image; its `end()`
                is called however the call ends (also on an error or an interrupt). See
                [`~DreamLLMPipeline.stream`] for typed events, images and batches.
            image_batch_window (`int`, *optional*):
                With one generator per prompt: how many language-model passes a row that started an image may wait for
                other rows to start theirs, so that their images are drawn together in one batched denoising loop.
                Defaults to `2 * num_inference_steps`: a wait costs at most that many extra passes, and each loop it
                saves has `num_inference_steps` UNet passes with guidance, which cost about twice a decoding pass (SD
                2.1's UNet at 512 px against a 7B language model). 0 draws every image at once. Waiting changes no document, since each row draws from its own
                generator; with one generator for the batch (or none) images are drawn at once.

        Returns:
            [`DreamLLMPipelineOutput`]: `documents` (text segments and images in reading order) and `text` (with
            `<image>` for each image), one entry per prompt, and `images`: every image of every document, flat, in
            reading order, prompt by prompt (a list of PIL images, or one stacked array or tensor).

        Raises:
            `ValueError`: on a bad setting, a prompt longer than the context, or a wrong number of images.
        """
        try:
            run = self.prepare_documents(
                prompt, images, negative_prompt, use_chat_template, max_images, num_inference_steps, guidance_scale,
                height, width, generator, generation_config, logits_processor, stopping_criteria, output_type,
                callback_on_step_end, callback_on_step_end_tensor_inputs, image_batch_window, **generate_kwargs,
            )
            feed = None if streamer is None else self.streamer_feed(streamer, run.batch)
            for event in self.document_events(run, feed=feed):
                pass
        finally:
            if streamer is not None:
                streamer.end()
        output = event.output
        if not return_dict:
            return output.documents, output.text, output.images
        return output

    def stream(self, prompt, images=None, preview_every: int | None = None, **kwargs) -> Iterator[StreamEvent]:
        r"""
        Writes documents like [`~DreamLLMPipeline.__call__`] and yields what happens as it happens.

        Events (see `dreamllm.pipelines.streaming`): [`TextDelta`] (new text of a row; the deltas between two images
        concatenate to that text segment of the document, multi-byte characters are never split), [`ImageStarted`]
        (a row began an image), [`ImagePreview`] (every `preview_every` denoising steps, when asked), [`ImageDone`]
        (the finished image) and, last, [`DocumentDone`] with the [`DreamLLMPipelineOutput`] the blocking call returns
        for the same arguments and seed. Rows of a batch interleave; every event but the last names its row.

        Breaking out of the loop, or closing the generator, stops the work and frees the key/value cache.

        Args:
            prompt, images, **kwargs: As for [`~DreamLLMPipeline.__call__`] (but `return_dict` and `streamer`).
            preview_every (`int`, *optional*): Preview each image being drawn every this many steps (off when `None`).
                A preview is the VAE decoding of the scheduler's current estimate of the clean latents (or of the
                latents, for schedulers without one), as a PIL image.

        Raises:
            `ValueError`: at once, on the settings [`~DreamLLMPipeline.__call__`] rejects or a bad `preview_every`.

        Example:

        ```python
        >>> from dreamllm.pipelines.streaming import ImageDone, TextDelta
        >>> for event in pipe.stream("Draw a red circle.", generator=torch.Generator().manual_seed(0)):
        ...     if isinstance(event, TextDelta):
        ...         print(event.text, end="", flush=True)
        ...     elif isinstance(event, ImageDone):
        ...         event.image.save(f"image_{event.index}.png")
        ```
        """
        for name in ("return_dict", "streamer"):
            if name in kwargs:
                raise ValueError(f"stream() does not take {name}; it yields events instead")
        if preview_every is not None and (
            isinstance(preview_every, bool) or not isinstance(preview_every, int) or preview_every < 1
        ):
            raise ValueError(f"preview_every must be a whole number >= 1 or None, got {preview_every!r}")
        run = self.prepare_documents(prompt, images, **kwargs)
        return self.document_events(run, preview_every=preview_every)

    @torch.no_grad()
    def prepare_documents(
        self,
        prompt,
        images=None,
        negative_prompt: str | None = None,
        use_chat_template: bool = True,
        max_images: int = 4,
        num_inference_steps: int = 50,
        guidance_scale: float = 7.5,
        height: int | None = None,
        width: int | None = None,
        generator: torch.Generator | list[torch.Generator] | None = None,
        generation_config: GenerationConfig | None = None,
        logits_processor: LogitsProcessorList | None = None,
        stopping_criteria: StoppingCriteriaList | None = None,
        output_type: str = "pil",
        callback_on_step_end: Callable | PipelineCallback | MultiPipelineCallbacks | None = None,
        callback_on_step_end_tensor_inputs: list[str] = ["latents"],
        image_batch_window: int | None = None,
        **generate_kwargs,
    ) -> DocumentRun:
        """Checks the arguments of [`~DreamLLMPipeline.__call__`] and encodes the prompts: everything before decoding."""
        callback_on_step_end_tensor_inputs = self.resolve_callback_inputs(
            callback_on_step_end, callback_on_step_end_tensor_inputs
        )
        default_height, default_width = self.default_image_size
        height = default_height if height is None else height
        width = default_width if width is None else width
        texts, prompt_images = self.prepare_document_prompts(prompt, images, use_chat_template)
        self.check_inputs(
            num_inference_steps, guidance_scale, height, width, output_type, callback_on_step_end_tensor_inputs,
            generator, len(texts),
        )
        if not isinstance(max_images, int) or max_images < 0:
            raise ValueError(f"max_images must be a whole number >= 0, got {max_images!r}")
        image_batch_window = self.resolve_image_batch_window(image_batch_window, num_inference_steps, generator)
        self.reset_call_state(guidance_scale)
        device = self._execution_device

        inputs = self.encode_document_prompts(texts, prompt_images, device)
        generation_config, logits_processor, stopping_criteria = self.prepare_decoding(
            generation_config, logits_processor, stopping_criteria, inputs.input_ids.shape[1], device, generate_kwargs
        )
        batch = DocumentBatch(
            inputs.input_ids,
            inputs.attention_mask,
            inputs.get("pixel_values"),
            [len(row_images) for row_images in prompt_images],
            self.model.config.pad_token_id,
        )
        diffusion = {
            "negative_prompt": negative_prompt,
            "num_inference_steps": num_inference_steps,
            "height": height,
            "width": width,
            "output_type": output_type,
            "callback_on_step_end": callback_on_step_end,
            "callback_on_step_end_tensor_inputs": callback_on_step_end_tensor_inputs,
        }
        return DocumentRun(
            batch, generation_config, logits_processor, stopping_criteria, max_images, image_batch_window, generator,
            diffusion,
        )

    def resolve_image_batch_window(
        self,
        image_batch_window: int | None,
        num_inference_steps: int,
        generator: torch.Generator | list[torch.Generator] | None,
    ) -> int:
        """
        The passes a row that started an image may wait for others (see [`~DreamLLMPipeline.__call__`]): 0 unless
        every row has its own generator, since with a shared one waiting would change which noise each image gets.
        """
        if image_batch_window is not None and (
            isinstance(image_batch_window, bool) or not isinstance(image_batch_window, int) or image_batch_window < 0
        ):
            raise ValueError(f"image_batch_window must be a whole number >= 0 or None, got {image_batch_window!r}")
        if not isinstance(generator, list):
            return 0
        return 2 * num_inference_steps if image_batch_window is None else image_batch_window

    def streamer_feed(self, streamer: BaseStreamer, batch: DocumentBatch) -> StreamerFeed:
        """A feed of `streamer` (one prompt only, as for `model.generate`), which gets the prompt ids at once."""
        if len(batch) != 1:
            raise ValueError(f"streamer works with one prompt, got {len(batch)}; use pipe.stream(...) for a batch")
        config = self.model.config
        feed = StreamerFeed(streamer, config.image_token_id, config.dream_start_token_id)
        feed.prompt(batch.rows[0].ids[None])
        return feed

    def document_output(self, batch: DocumentBatch) -> DreamLLMPipelineOutput:
        """The documents, texts (with `<image>` where images stand) and images of finished rows."""
        documents = [self.processor.decode_document(row.new_ids, row.images) for row in batch.rows]
        text = [" ".join(self.processor.image_token if not isinstance(part, str) else part for part in document)
                for document in documents]
        images = stack_images([image for row in batch.rows for image in row.images])
        return DreamLLMPipelineOutput(documents=documents, text=text, images=images)

    def prepare_document_prompts(
        self, prompt, images, use_chat_template: bool
    ) -> tuple[list[str], list[list[PIL.Image.Image]]]:
        """
        The prompt text of every row (chat template applied) and the images it reads, in order.

        Raises:
            `ValueError`: when the number of images does not fit the prompt, or the prompt has an unknown form.
        """
        if is_conversation(prompt) or isinstance(prompt, str):
            prompts, images_per_prompt = [prompt], [images]
        elif isinstance(prompt, (list, tuple)) and prompt and all(isinstance(p, str) or is_conversation(p)
                                                                   for p in prompt):
            prompts = list(prompt)
            images_per_prompt = [None] * len(prompts) if images is None else list(images)
            if len(images_per_prompt) != len(prompts):
                raise ValueError(
                    f"images must hold one entry per prompt ({len(prompts)}), got {len(images_per_prompt)}"
                )
        else:
            raise ValueError("prompt must be a string, a conversation (a list of messages), or a list of either")
        texts, row_images = [], []
        for row_prompt, given in zip(prompts, images_per_prompt):
            if is_conversation(row_prompt):
                text, read = self.conversation_prompt(row_prompt, given, use_chat_template)
            else:
                text, read = self.string_prompt(row_prompt, as_image_list(given), use_chat_template)
            texts.append(text)
            row_images.append(read)
        return texts, row_images

    def string_prompt(self, prompt: str, images: list, use_chat_template: bool) -> tuple[str, list]:
        """A string prompt and its images as prompt text: placeholders filled, or images shown before the text."""
        self.processor.check_text(prompt, "prompt")
        num_placeholders = prompt.count(self.processor.image_token)
        if num_placeholders and num_placeholders != len(images):
            raise ValueError(
                f"The prompt holds {num_placeholders} {self.processor.image_token} placeholder(s) but "
                f"{len(images)} image(s) were given"
            )
        if not use_chat_template:
            if len(images) != num_placeholders:
                raise ValueError(
                    f"Without the chat template, each of the {len(images)} image(s) needs a "
                    f"{self.processor.image_token} placeholder in the prompt"
                )
            return prompt, images
        content = [] if num_placeholders else [{"type": "image"}] * len(images)
        content.append({"type": "text", "text": prompt})
        return self.chat_text([{"role": "user", "content": content}]), images

    def chat_text(self, conversation: list[dict]) -> str:
        """A conversation through the processor's chat template, ending with the opened assistant turn."""
        return self.processor.apply_chat_template(conversation, add_generation_prompt=True, tokenize=False)

    def conversation_prompt(self, conversation: list[dict], images, use_chat_template: bool) -> tuple[str, list]:
        """A conversation as prompt text (chat template, assistant turn opened) and the images of its user turns."""
        if not use_chat_template:
            raise ValueError("A conversation needs the chat template; use a string prompt with use_chat_template=False")
        if images is not None:
            raise ValueError("Put the images of a conversation into its messages ({'type': 'image', 'image': ...})")
        read = []
        for index, message in enumerate(conversation):
            if not isinstance(message.get("content"), (str, list)):
                raise ValueError(f"Message {index} of the conversation has no content (a string or a list of items)")
            if message["role"] != "user" or isinstance(message["content"], str):
                continue
            for item in message["content"]:
                if item.get("type") == "image":
                    source = item.get("image") or item.get("url") or item.get("path")
                    if source is None:
                        raise ValueError("An image item of a user message holds no 'image', 'url' or 'path'")
                    read.append(load_image(source))
        return self.chat_text(conversation), read

    def encode_document_prompts(self, texts: list[str], images: list[list], device: torch.device) -> BatchFeature:
        """Tokenizes the prompts (left-padded) and prepares their images, checking that they fit the context."""
        flat_images = [image for row_images in images for image in row_images]
        inputs = self.processor(text=texts, images=flat_images or None, return_tensors="pt").to(device)
        self.check_prompt_length(int(inputs.attention_mask.sum(1).max()))
        return inputs

    def prepare_decoding(
        self,
        generation_config: GenerationConfig | None,
        logits_processor: LogitsProcessorList | None,
        stopping_criteria: StoppingCriteriaList | None,
        prompt_length: int,
        device: torch.device,
        generate_kwargs: dict,
    ) -> tuple[GenerationConfig, LogitsProcessorList, StoppingCriteriaList]:
        """
        The decoding settings, merged as `model.generate` merges them (arguments over `generation_config` over the
        model's generation config), and the logits processors and stopping criteria they imply. The token budget is
        `max_new_tokens` (default 256) sampled tokens per row; `max_length` is not used.

        Raises:
            `ValueError`: for arguments that are not generation settings, beam search or several sequences per prompt.
        """
        config, unused = self.model._prepare_generation_config(generation_config, **generate_kwargs)
        if unused:
            names = ", ".join(sorted(unused))
            raise ValueError(f"Unknown arguments: {names} (neither pipeline nor generation settings)")
        if config.num_beams != 1 or config.num_return_sequences != 1:
            raise ValueError("Interleaved generation writes one sequence per prompt: num_beams and "
                             "num_return_sequences must be 1 (pass several prompts instead)")
        if config.max_new_tokens is None:
            config.max_new_tokens = DEFAULT_MAX_NEW_TOKENS
        config.max_length = None
        config.eos_token_id = self.eos_token_ids_without_dream_start(config.eos_token_id)
        self.model._prepare_special_tokens(config, kwargs_has_attention_mask=True, device=device)
        logits_processor = self.model._get_logits_processor(
            config, input_ids_seq_length=prompt_length, logits_processor=logits_processor or LogitsProcessorList(),
            device=device,
        )
        stopping_criteria = self.model._get_stopping_criteria(
            config, stopping_criteria or StoppingCriteriaList(), tokenizer=self.processor.tokenizer
        )
        return config, logits_processor, stopping_criteria

    def eos_token_ids_without_dream_start(self, eos_token_id: int | list[int] | None) -> list[int]:
        """The end-of-sequence ids for the pipeline's own decoding, which draws at `<dream_start>` instead of stopping
        there as plain `generate` does (see `apply_dreamllm_generation_defaults`)."""
        dream_start = self.model.config.dream_start_token_id
        return [token_id for token_id in token_id_list(eos_token_id) if token_id != dream_start]

    @torch.no_grad()
    def document_events(
        self, run: DocumentRun, preview_every: int | None = None, feed: StreamerFeed | None = None
    ) -> Iterator[StreamEvent]:
        """
        The decoding loop, yielding [`~DreamLLMPipeline.stream`]'s events. Each pass feeds every row's pending ids on
        the shared cache (dream blocks once they stop waiting for other rows'); then rows whose pass ended a dream block
        get their images drawn together (and their image blocks queued), and the other fed rows sample a token.
        Closing the generator drops the cache.
        """
        batch = run.batch
        decoders = [SegmentDecoder(self.processor.tokenizer) for _ in batch.rows]
        cache = DynamicCache(config=self.model.config)
        try:
            with self.progress_bar(total=run.generation_config.max_new_tokens) as progress_bar:
                while batch.has_work:
                    batch.release_waiting_rows(run.image_batch_window)
                    chunk = batch.next_chunk()
                    outputs = self.forward_chunk(chunk, cache, len(batch))
                    drawing_rows = [index for index in chunk.fed_rows if batch.rows[index].drawing]
                    writing_rows = [index for index in chunk.fed_rows if not batch.rows[index].drawing]
                    if writing_rows:
                        tokens = self.write_next_tokens(
                            batch, outputs.logits[:, -1], writing_rows, run.generation_config, run.logits_processor,
                            run.stopping_criteria, run.max_images, run.generator,
                        )
                        for index, token in tokens.items():
                            yield from self.token_events(batch.rows[index], index, token, decoders[index], feed)
                    if drawing_rows:
                        for event in self.draw_images(
                            batch, drawing_rows, outputs.dream_conditions, run.generator, preview_every, **run.diffusion
                        ):
                            if feed is not None and isinstance(event, ImageDone):
                                feed.image()
                            yield event
                    if self.interrupt:
                        for row in batch.rows:
                            row.finished = True
                    progress_bar.update(max(row.num_new_tokens for row in batch.rows) - progress_bar.n)
            del cache
            for index, decoder in enumerate(decoders):
                rest = decoder.finish()
                if rest:
                    yield TextDelta(index, rest)
            yield DocumentDone(self.document_output(batch))
        finally:
            self.maybe_free_model_hooks()

    def forward_chunk(self, chunk: ForwardChunk, cache: DynamicCache, batch_size: int):
        """
        The language model on a chunk. A `rows_only` chunk runs on a cache of its rows alone; their new keys and
        values are written back and every other row gets holes, so the shared cache stays one rectangle. Logits come
        back for every row of the batch (zeros for the rows not fed).
        """
        inputs = {
            "input_ids": chunk.input_ids, "attention_mask": chunk.attention_mask, "position_ids": chunk.position_ids,
            "pixel_values": chunk.pixel_values, "use_cache": True, "logits_to_keep": 1,
        }
        if not chunk.rows_only:
            return self.model(**inputs, **{CACHE_ARGUMENT: cache})
        rows = torch.tensor(chunk.fed_rows, device=chunk.input_ids.device)
        rows_cache = DynamicCache(config=self.model.config)
        for layer_index, layer in enumerate(cache.layers):
            if layer.is_initialized:
                rows_cache.update(layer.keys[rows], layer.values[rows], layer_index)
        outputs = self.model(**inputs, **{CACHE_ARGUMENT: rows_cache})
        length = chunk.input_ids.shape[1]
        for layer, rows_layer in zip(cache.layers, rows_cache.layers):
            for name in ("keys", "values"):
                new = getattr(rows_layer, name)[..., -length:, :]
                holes = new.new_zeros((batch_size, *new.shape[1:]))
                holes[rows] = new
                setattr(layer, name, torch.cat([getattr(layer, name), holes], dim=-2) if layer.is_initialized else holes)
            if not layer.is_initialized:
                layer.dtype, layer.device, layer.is_initialized = rows_layer.dtype, rows_layer.device, True
        logits = outputs.logits.new_zeros((batch_size, *outputs.logits.shape[1:]))
        logits[rows] = outputs.logits
        outputs.logits = logits
        return outputs

    def token_events(
        self, row: DocumentRow, index: int, token: int, decoder: SegmentDecoder, feed: StreamerFeed | None
    ) -> Iterator[StreamEvent]:
        """The events of a sampled token: new text, or (for `<dream_start>`) the end of the segment and a new image."""
        if feed is not None:
            feed.token(token)
        if token == self.model.config.dream_start_token_id:
            rest = decoder.finish()
            if rest:
                yield TextDelta(index, rest)
            yield ImageStarted(index, len(row.images))
            return
        delta = decoder.add(token)
        if delta:
            yield TextDelta(index, delta)

    def write_next_tokens(
        self,
        batch: DocumentBatch,
        logits: torch.Tensor,
        rows: list[int],
        generation_config: GenerationConfig,
        logits_processor: LogitsProcessorList,
        stopping_criteria: StoppingCriteriaList,
        max_images: int,
        generator: torch.Generator | list[torch.Generator] | None,
    ) -> dict[int, int]:
        """
        Samples (or picks) the next token of `rows`, queues a dream block after `<dream_start>`, and ends rows.

        Returns:
            The token each row of `rows` got, by row.
        """
        sequences = batch.sequences()
        scores = logits_processor(sequences, self.mask_inserted_tokens(logits.float(), batch, max_images))
        next_tokens = select_tokens(scores[rows], generation_config.do_sample, generator, rows)
        for index, token in zip(rows, next_tokens):
            row = batch.rows[index]
            row.extend([token])
            row.num_new_tokens += 1
            if token == self.model.config.dream_start_token_id:
                row.extend(self.model.dream_block_ids(1, "cpu")[0, 1:].tolist())
                row.drawing, row.waiting = True, 0
        stopped = stopping_criteria(batch.sequences(), scores).tolist()
        for index in rows:
            row = batch.rows[index]
            out_of_room = len(row.ids) >= self.context_length
            if stopped[index] or out_of_room or row.num_new_tokens >= generation_config.max_new_tokens:
                row.finished = True
        return dict(zip(rows, next_tokens))

    def mask_inserted_tokens(self, scores: torch.Tensor, batch: DocumentBatch, max_images: int) -> torch.Tensor:
        """
        Masks the tokens only the pipeline writes (block tokens, placeholders, padding) for every row, and
        `<dream_start>` for rows that hold `max_images` images or whose context cannot hold another image.
        """
        config = self.model.config
        inserted = [
            config.image_token_id, config.image_patch_token_id, config.image_start_token_id, config.image_end_token_id,
            config.dream_token_id, config.dream_end_token_id, config.pad_token_id,
        ]
        scores[:, inserted] = -float("inf")
        image_room = config.num_dream_queries + config.num_image_tokens + 4
        cannot_draw = [
            len(row.images) >= max_images or len(row.ids) + image_room > self.context_length for row in batch.rows
        ]
        scores[torch.tensor(cannot_draw, device=scores.device), config.dream_start_token_id] = -float("inf")
        return scores

    def draw_images(
        self,
        batch: DocumentBatch,
        rows: list[int],
        conditions: torch.Tensor,
        generator: torch.Generator | list[torch.Generator] | None,
        preview_every: int | None,
        negative_prompt: str | None,
        num_inference_steps: int,
        height: int,
        width: int,
        output_type: str,
        callback_on_step_end,
        callback_on_step_end_tensor_inputs: list[str],
    ) -> Iterator[ImagePreview | ImageDone]:
        """
        Draws the images of the dream blocks that `rows` just ended, writes them and queues their image blocks,
        yielding previews every `preview_every` steps (when set) and each finished image.
        """
        if isinstance(generator, list):
            generator = [generator[index] for index in rows]
        prompt_embeds = conditions.to(self.unet.dtype)
        negative_prompt_embeds = None
        if self.do_classifier_free_guidance:
            negative_prompt_embeds = self.unconditional_condition(negative_prompt, prompt_embeds.device)
            negative_prompt_embeds = negative_prompt_embeds.expand(len(rows), -1, -1)
        latents = self.prepare_latents(len(rows), height, width, prompt_embeds.dtype, prompt_embeds.device, generator)
        numbers = [len(batch.rows[index].images) for index in rows]
        for step in self.denoising_steps(
            latents, prompt_embeds, negative_prompt_embeds, num_inference_steps, generator,
            callback_on_step_end, callback_on_step_end_tensor_inputs,
        ):
            latents = step.latents
            if preview_every and step.number % preview_every == 0 and step.number < self.num_timesteps:
                previews = self.vae_image_processor.postprocess(self.decode_latents(step.estimate), output_type="pil")
                for index, number, preview in zip(rows, numbers, previews):
                    yield ImagePreview(index, number, step.number, preview)
        decoded = self.decode_latents(latents)
        pictures = self.vae_image_processor.postprocess(decoded, output_type="pil")
        outputs = latents if output_type == "latent" else self.vae_image_processor.postprocess(decoded, output_type)
        for index, number, picture, output in zip(rows, numbers, pictures, outputs):
            self.add_drawn_image(batch.rows[index], picture, output)
            yield ImageDone(index, number, output)

    def unconditional_condition(self, negative_prompt: str | None, device: torch.device) -> torch.Tensor:
        """
        The unconditional condition of the images of one `__call__`: computed on its first draw (never for a
        document without images) and reused by every other image of the call.
        """
        if self._negative_prompt_embeds is None:
            self._negative_prompt_embeds = self.encode_negative_prompt(negative_prompt, 1, device).to(self.unet.dtype)
        return self._negative_prompt_embeds

    def add_drawn_image(self, row: DocumentRow, picture: PIL.Image.Image, output):
        """Writes a drawn image into a row: the document gets `output`; the model will read `picture` in an image block."""
        config = self.model.config
        row.images.append(output)
        row.extend([config.image_start_token_id, *[config.image_patch_token_id] * config.num_image_tokens,
                    config.image_end_token_id])
        row.drawing = False
        if not row.finished:
            pixel_values = self.processor.image_processor(images=[picture], return_tensors="pt").pixel_values
            row.pending_pixel_values.append(pixel_values.to(self._execution_device))

    # ----------------------------------------------------------------------------------------------------------------
    # Saving, loading, sharing
    # ----------------------------------------------------------------------------------------------------------------

    def save_pretrained(
        self,
        save_directory: str | os.PathLike,
        safe_serialization: bool = True,
        variant: str | None = None,
        max_shard_size: int | str | None = None,
        push_to_hub: bool = False,
    ):
        """
        Writes the one-folder layout atomically: the model and processor at the top, `unet/`, `vae/`, `scheduler/`
        and `model_index.json` beside them. An existing saved model in `save_directory` is replaced only once the new
        one is complete.

        Args:
            save_directory (`str` or `os.PathLike`): The folder to write.
            safe_serialization (`bool`, defaults to `True`): Weights are safetensors; `False` is refused.
            variant (`str`, *optional*): Names the weight files `*.{variant}.safetensors` (e.g. `"fp16"`), loaded with
                `from_pretrained(..., variant=...)`.
            max_shard_size (`int` or `str`, *optional*): Splits each component's weights into files of at most this
                size (`"200MB"`), with an index file.
            push_to_hub: Refused; use [`~DreamLLMPipeline.push_to_hub`].
        """
        if push_to_hub:
            raise ValueError("Use DreamLLMPipeline.push_to_hub(repo_id) to upload a pipeline")
        if not safe_serialization:
            raise ValueError("safe_serialization=False: DreamLLM pipelines are saved as safetensors only")
        LoadingOptions(variant=variant).check()
        weights_kwargs = {"variant": variant}
        if max_shard_size is not None:
            weights_kwargs["max_shard_size"] = max_shard_size
        with atomic_directory(save_directory) as staging:
            self.model.save_pretrained(staging, **weights_kwargs)
            self.processor.save_pretrained(staging)
            for name in DIFFUSION_COMPONENTS:
                getattr(self, name).save_pretrained(staging / name, **weights_kwargs)
            self.scheduler.save_pretrained(staging / "scheduler")
            self.save_config(staging)
            remove_local_origins(staging)
            write_loader_files(staging)

    def push_to_hub(
        self,
        repo_id: str,
        commit_message: str | None = None,
        private: bool | None = None,
        token: str | None = None,
        create_pr: bool = False,
        license: str | None = None,
    ):
        """
        Uploads the pipeline to the Hub: the [`~DreamLLMPipeline.save_pretrained`] layout plus a model card
        (`README.md`: library, pipeline tag, tags, `license` when given and a usage snippet). Creates the repo when
        it does not exist and prints its URL.

        Args:
            license (`str`, *optional*): The license the card declares (an SPDX id or a Hub license name, e.g.
                `"llama2"`).

        Returns:
            The `CommitInfo` of the upload.
        """
        with tempfile.TemporaryDirectory() as temporary:
            folder = Path(temporary) / "pipeline"
            self.save_pretrained(folder)
            return upload_folder_with_card(
                folder, repo_id, lambda repo: pipeline_model_card(repo, license=license), what="DreamLLMPipeline",
                commit_message=commit_message or "Upload DreamLLMPipeline", private=private, token=token,
                create_pr=create_pr,
            )  # fmt: skip

    @classmethod
    def from_pretrained(
        cls, pretrained_model_name_or_path: str | os.PathLike | None = None, **kwargs
    ) -> "DreamLLMPipeline":
        """
        Loads a pipeline saved by [`~DreamLLMPipeline.save_pretrained`] from a local folder or a Hub repo id, with the
        loading options of `DiffusionPipeline.from_pretrained`.

        Args:
            pretrained_model_name_or_path (`str` or `os.PathLike`, *optional*): A folder or a Hub repo id; by default
                the toy-world model shipped with the package (`TOY_MODEL_PATH`), which draws and reads 64x64 pictures
                of coloured shapes.
            dtype (`torch.dtype` or `dict[str, torch.dtype]`, *optional*): One dtype for every component, or one per
                component (`{"model": torch.bfloat16, "default": torch.float32}`; components not named take
                `"default"`, else float32). Without it every component loads in the dtype it was saved in.
                `torch_dtype` also works.
            variant (`str`, *optional*): Loads the `*.{variant}.safetensors` weights (e.g. `"fp16"`) of the components
                that have them; raises `ValueError` when none has.
            device_map (`str`, *optional*): `"balanced"` (whole components spread over the accelerators by size), an
                accelerator (`"cuda"`) or `"cpu"`. `max_memory` bounds each device for `"balanced"`.
            low_cpu_mem_usage (`bool`, defaults to `True`): As for diffusers models (the language model always loads
                without a second copy of its weights in transformers 5).
            quantization_config (*optional*): A diffusers `PipelineQuantizationConfig` (components by name: `model`,
                `unet`, `vae`), or a transformers quantization config (`QuantoConfig`, `TorchAoConfig`,
                `BitsAndBytesConfig`, ...) for the language model.
            model, processor, unet, vae, scheduler (*optional*): Ready components that replace the saved ones.
            attn_implementation (`str`, *optional*): Attention of the language model and vision tower.
            revision, token, cache_dir, local_files_only, force_download (*optional*): Hub download options.

        Raises:
            `TypeError`: naming an argument it does not support. `FileNotFoundError` / `ValueError`: naming the
            missing file or folder, the missing variant, or the component of the wrong kind.
        """
        options = LoadingOptions.pop_from(kwargs)
        components = {name: kwargs.pop(name) for name in COMPONENTS if name in kwargs}
        folder = resolve_pretrained_folder(pretrained_model_name_or_path or TOY_MODEL_PATH, **options.download)
        model_index = read_model_index(folder)
        weights_folders = {
            name: folder if name == "model" else folder / name
            for name in WEIGHTED_COMPONENTS if name not in components
        }
        classes = {name: component_class(model_index, name) for name in (*DIFFUSION_COMPONENTS, "scheduler")
                   if name not in components}
        for name in classes:
            check_component_folder(folder, name)
        top_level = [folder] if {"model", "processor"} - set(components) else []
        check_saved_files(top_level + [folder / name for name in classes], weights_folders, options.variant)
        variants = components_with_variant(weights_folders, options.variant)
        devices = options.component_devices(weights_folders)
        if "model" not in components:
            components["model"] = DreamLLMForCausalLM.from_pretrained(
                folder, **options.component_kwargs("model", folder, variants, devices.get("model"))
            )
        if "processor" not in components:
            components["processor"] = DreamLLMProcessor.from_pretrained(folder)
        for name in DIFFUSION_COMPONENTS:
            if name not in components:
                kwargs = options.component_kwargs(name, weights_folders[name], variants, devices.get(name))
                components[name] = classes[name].from_pretrained(folder, subfolder=name, **kwargs)
        if "scheduler" not in components:
            components["scheduler"] = classes["scheduler"].from_pretrained(folder, subfolder="scheduler")
        pipeline = cls(**components)
        pipeline.register_to_config(_name_or_path=str(pretrained_model_name_or_path))
        if options.device_map is not None:
            pipeline.hf_device_map = options.final_device_map(devices)
        if options.quantization_config is not None:
            pipeline.quantization_config = options.quantization_config
        return pipeline


def select_tokens(
    scores: torch.Tensor,
    do_sample: bool,
    generator: torch.Generator | list[torch.Generator] | None,
    rows: list[int],
) -> list[int]:
    """
    The argmax of each row of `scores`, or a draw from its softmax. Draws come from `generator` (global RNG when
    `None`); with one generator per batch row, row `rows[i]` draws from its own.
    """
    if not do_sample:
        return scores.argmax(-1).tolist()
    probabilities = scores.softmax(-1)
    if not isinstance(generator, list):
        device = generator.device if generator is not None else probabilities.device
        return torch.multinomial(probabilities.to(device), 1, generator=generator)[:, 0].tolist()
    return [
        int(torch.multinomial(row_probabilities.to(generator[index].device), 1, generator=generator[index]))
        for index, row_probabilities in zip(rows, probabilities)
    ]


def check_finite(name: str, tensor: torch.Tensor):
    """Raises a `ValueError` naming `tensor` when it holds NaN or infinite values."""
    if not torch.isfinite(tensor).all():
        raise ValueError(f"{name} holds NaN or infinite values")


def is_conversation(prompt) -> bool:
    """Whether `prompt` is one conversation: a non-empty list of `{"role", "content"}` messages."""
    return isinstance(prompt, (list, tuple)) and bool(prompt) and all(
        isinstance(message, dict) and "role" in message for message in prompt
    )


def as_image_list(images) -> list:
    """`None`, one image, or a list of images (PIL, arrays, tensors or paths/URLs) as a list of loaded images."""
    if images is None:
        return []
    images = images if isinstance(images, (list, tuple)) else [images]
    return [load_image(image) if isinstance(image, str) else image for image in images]


def stack_images(images: list):
    """Images in a flat batch like diffusers' outputs: PIL images as a list, arrays or tensors stacked into one."""
    if images and isinstance(images[0], np.ndarray):
        return np.stack(images)
    if images and isinstance(images[0], torch.Tensor):
        return torch.stack(images)
    return images


def document_images(document: list) -> list:
    """The images of one document of [`DreamLLMPipelineOutput.documents`], in reading order."""
    return [part for part in document if not isinstance(part, str)]


def check_components(model, processor, unet, vae, scheduler):
    """Raises a `TypeError` naming a component of the wrong kind, or a `ValueError` when they do not fit together."""
    expected = {
        "model": (model, DreamLLMForCausalLM),
        "processor": (processor, DreamLLMProcessor),
        "unet": (unet, UNet2DConditionModel),
        "vae": (vae, AutoencoderKL),
        "scheduler": (scheduler, SchedulerMixin),
    }
    for name, (component, component_type) in expected.items():
        if not isinstance(component, component_type):
            raise TypeError(f"{name} must be a {component_type.__name__}, got {type(component).__name__}")
    check_scheduler(scheduler)
    if unet.config.cross_attention_dim != model.config.condition_dim:
        raise ValueError(
            f"The UNet's cross_attention_dim ({unet.config.cross_attention_dim}) differs from the model's "
            f"condition_dim ({model.config.condition_dim})"
        )
    if unet.config.in_channels != vae.config.latent_channels:
        raise ValueError(
            f"The UNet takes {unet.config.in_channels} channels but the VAE has {vae.config.latent_channels} latent channels"
        )


def check_scheduler(scheduler):
    """
    Raises a `TypeError` naming a scheduler the pipeline cannot drive. DreamLLM's UNet predicts noise on the DDPM
    schedule, as Stable Diffusion's does, so the pipeline drives the schedulers `StableDiffusionPipeline` drives:
    `set_timesteps`, `init_noise_sigma`, `scale_model_input`, `step(model_output, timestep, sample)` and a
    `prediction_type` of `epsilon`, `v_prediction` or `sample`. Flow-matching schedulers (`FlowMatchEuler...`),
    and those needing more inputs at each step (RePaint, Karras-VE), are refused.
    """
    if not isinstance(scheduler, SchedulerMixin):
        raise TypeError(f"scheduler must be a SchedulerMixin, got {type(scheduler).__name__}")
    name = type(scheduler).__name__
    missing = [attribute for attribute in SCHEDULER_INTERFACE if not hasattr(scheduler, attribute)]
    if missing:
        raise TypeError(
            f"{name} cannot drive DreamLLM's UNet: it has no {', '.join(missing)} (a noise-prediction UNet needs a "
            f"DDPM-style scheduler such as DDPMScheduler, DDIMScheduler or DPMSolverMultistepScheduler)"
        )
    step_parameters = inspect.signature(scheduler.step).parameters.values()
    required = [
        parameter.name for parameter in step_parameters
        if parameter.default is inspect.Parameter.empty and parameter.kind == parameter.POSITIONAL_OR_KEYWORD
    ]
    if required != ["model_output", "timestep", "sample"]:
        raise TypeError(f"{name} cannot drive DreamLLM's UNet: its step needs {', '.join(required)}")
    takes_prediction_type = "prediction_type" in inspect.signature(type(scheduler).__init__).parameters
    prediction_type = scheduler.config.get("prediction_type") if takes_prediction_type else None
    if prediction_type not in UNET_PREDICTION_TYPES:
        raise TypeError(
            f"{name} cannot drive DreamLLM's UNet: its prediction_type is {prediction_type!r}, not one of "
            f"{', '.join(UNET_PREDICTION_TYPES)}"
        )


def resolve_pretrained_folder(name_or_path: str | os.PathLike, **download_kwargs) -> Path:
    """A local folder as is, or the local snapshot of a Hub repo id (downloaded unless `local_files_only`)."""
    path = Path(name_or_path)
    if path.is_dir():
        return path
    if path.exists() or not HUB_REPO_ID.fullmatch(str(name_or_path)):
        raise FileNotFoundError(f"{name_or_path} is neither a folder holding a saved DreamLLM nor a Hub repo id")
    return Path(snapshot_download(str(name_or_path), **download_kwargs))


def check_component_folder(folder: Path, name: str):
    """Raises a `FileNotFoundError` naming the component folder (`unet/`, `vae/`, `scheduler/`) that is missing."""
    config_name = "scheduler_config.json" if name == "scheduler" else "config.json"
    if not (folder / name / config_name).is_file():
        what = "folder" if not (folder / name).is_dir() else f"{config_name} in its folder"
        raise FileNotFoundError(
            f"{folder} has no {name}/ {what}: a saved DreamLLMPipeline holds unet/, vae/ and scheduler/ beside the "
            f"language model (pass {name}= to use another)"
        )


def read_model_index(folder: Path) -> dict:
    """The pipeline's `model_index.json`, with a clear error when it is missing or unreadable."""
    index_file = folder / "model_index.json"
    if not index_file.is_file():
        raise FileNotFoundError(f"{folder} has no model_index.json: it does not hold a saved DreamLLMPipeline")
    try:
        return json.loads(index_file.read_text())
    except json.JSONDecodeError as error:
        raise ValueError(f"{index_file} is not valid JSON: {error}") from error


def component_class(model_index: dict, name: str) -> type:
    """The diffusers class `model_index.json` names for a UNet, VAE or scheduler, checked to be of the right kind."""
    library, class_name = model_index.get(name) or (None, None)
    if library != "diffusers" or not hasattr(diffusers, str(class_name)):
        raise ValueError(f"model_index.json names {library}.{class_name} for {name}; expected a diffusers class")
    component = getattr(diffusers, class_name)
    expected = DIFFUSION_COMPONENTS.get(name, SchedulerMixin)
    if not issubclass(component, expected):
        raise ValueError(f"model_index.json names {class_name} for {name}, which is not a {expected.__name__}")
    return component


__all__ = ["DreamLLMPipeline", "DreamLLMPipelineOutput", "default_scheduler", "document_images"]
