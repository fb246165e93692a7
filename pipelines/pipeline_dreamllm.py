"""DreamLLMPipeline: free-form interleaved documents, text-to-image and image comprehension with one DreamLLM."""

import json
import os
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import PIL.Image
import torch
from diffusers import AutoencoderKL, DDPMScheduler, DiffusionPipeline, UNet2DConditionModel
from diffusers.schedulers.scheduling_utils import SchedulerMixin
from diffusers.utils import BaseOutput
from huggingface_hub import snapshot_download

import diffusers
from dreamllm.file_utils import atomic_directory
from dreamllm.modeling_dreamllm import DreamLLMForCausalLM
from dreamllm.processing import DreamLLMProcessor

HUB_REPO_ID = re.compile(r"[\w.-]+(/[\w.-]+)?")
DIFFUSION_COMPONENTS = {"unet": UNet2DConditionModel, "vae": AutoencoderKL}


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
        images (`list[list[PIL.Image.Image]]` or `np.ndarray` or `torch.Tensor`, *optional*):
            The images of each document (interleaved generation), or the generated images (text-to-image).
    """

    documents: list[list[str | PIL.Image.Image]] | None = None
    text: list[str] | None = None
    images: list[list[PIL.Image.Image]] | list[PIL.Image.Image] | np.ndarray | torch.Tensor | None = None


class DreamLLMPipeline(DiffusionPipeline):
    r"""
    DreamLLM as a diffusers pipeline: the language model writes text and decides where images go; each image it
    starts is drawn by a Stable Diffusion UNet conditioned on the model's dream-query states.

    Args:
        model ([`DreamLLMForCausalLM`]): The multimodal language model.
        processor ([`DreamLLMProcessor`]): Its tokenizer and image processor.
        unet ([`UNet2DConditionModel`]): The denoiser; its `cross_attention_dim` equals `model.config.condition_dim`.
        vae ([`AutoencoderKL`]): Decodes latents to images.
        scheduler ([`SchedulerMixin`]): Any diffusers scheduler; DreamLLM's own is [`default_scheduler`].

    The saved layout serves every entry point without duplicated weights: the model and processor files sit at the
    top of the folder (so `AutoModelForCausalLM`, `AutoProcessor` and `transformers.pipeline` load it), and `unet/`,
    `vae/`, `scheduler/` and `model_index.json` sit beside them.
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

    def save_pretrained(
        self,
        save_directory: str | os.PathLike,
        max_shard_size: int | str | None = None,
        push_to_hub: bool = False,
        **kwargs,
    ):
        """
        Writes the one-folder layout atomically: the model and processor at the top, `unet/`, `vae/`, `scheduler/`
        and `model_index.json` beside them. Weights are safetensors. An existing saved model in `save_directory` is
        replaced only once the new one is complete.
        """
        if push_to_hub:
            raise ValueError("Use DreamLLMPipeline.push_to_hub(repo_id) to upload a pipeline")
        shard_kwargs = {} if max_shard_size is None else {"max_shard_size": max_shard_size}
        with atomic_directory(save_directory) as staging:
            self.model.save_pretrained(staging, **shard_kwargs)
            self.processor.save_pretrained(staging)
            for name in DIFFUSION_COMPONENTS:
                getattr(self, name).save_pretrained(staging / name, **shard_kwargs)
            self.scheduler.save_pretrained(staging / "scheduler")
            self.save_config(staging)

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path: str | os.PathLike, **kwargs) -> "DreamLLMPipeline":
        """
        Loads a pipeline saved by [`~DreamLLMPipeline.save_pretrained`] from a local folder or a Hub repo id.

        Args:
            pretrained_model_name_or_path (`str` or `os.PathLike`): A folder or a Hub repo id.
            dtype (`torch.dtype`, *optional*): Loads every component in this dtype (`torch_dtype` also works).
            model, processor, unet, vae, scheduler (*optional*): Ready components that replace the saved ones.
            attn_implementation (`str`, *optional*): Attention of the language model and vision tower.
            revision, token, cache_dir, local_files_only (*optional*): As for `huggingface_hub.snapshot_download`.

        Raises:
            `FileNotFoundError` / `ValueError`: naming the missing file or the component of the wrong kind.
        """
        dtype = kwargs.pop("dtype", None) or kwargs.pop("torch_dtype", None)
        attn_implementation = kwargs.pop("attn_implementation", None)
        components = {name: kwargs.pop(name) for name in ("model", "processor", "unet", "vae", "scheduler") if name in kwargs}
        folder = resolve_pretrained_folder(pretrained_model_name_or_path, **kwargs)
        model_index = read_model_index(folder)
        if "model" not in components:
            model_kwargs = {} if attn_implementation is None else {"attn_implementation": attn_implementation}
            components["model"] = DreamLLMForCausalLM.from_pretrained(folder, dtype=dtype, **model_kwargs)
        if "processor" not in components:
            components["processor"] = DreamLLMProcessor.from_pretrained(folder)
        for name in DIFFUSION_COMPONENTS:
            if name not in components:
                components[name] = component_class(model_index, name).from_pretrained(folder, subfolder=name, dtype=dtype)
        if "scheduler" not in components:
            components["scheduler"] = component_class(model_index, "scheduler").from_pretrained(folder, subfolder="scheduler")
        pipeline = cls(**components)
        pipeline.register_to_config(_name_or_path=str(pretrained_model_name_or_path))
        return pipeline


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
    if unet.config.cross_attention_dim != model.config.condition_dim:
        raise ValueError(
            f"The UNet's cross_attention_dim ({unet.config.cross_attention_dim}) differs from the model's "
            f"condition_dim ({model.config.condition_dim})"
        )
    if unet.config.in_channels != vae.config.latent_channels:
        raise ValueError(
            f"The UNet takes {unet.config.in_channels} channels but the VAE has {vae.config.latent_channels} latent channels"
        )


def resolve_pretrained_folder(name_or_path: str | os.PathLike, **download_kwargs) -> Path:
    """A local folder as is, or the local snapshot of a Hub repo id (downloaded unless `local_files_only`)."""
    path = Path(name_or_path)
    if path.is_dir():
        return path
    if path.exists() or not HUB_REPO_ID.fullmatch(str(name_or_path)):
        raise FileNotFoundError(f"{name_or_path} is neither a folder holding a saved DreamLLM nor a Hub repo id")
    return Path(snapshot_download(str(name_or_path), **download_kwargs))


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


__all__ = ["DreamLLMPipeline", "DreamLLMPipelineOutput", "default_scheduler"]
