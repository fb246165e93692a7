"""The upstream CLIP and Stable Diffusion configs a DreamLLM checkpoint names but does not carry.

The original release stores the CLIP vision tower, the UNet and the VAE weights in its plugin files, but their
configs (and the CLIP preprocessor and the diffusion scheduler settings) come from the upstream repos named in
`plugins_init_kwargs`, by Hub id or by path. Nothing is downloaded: a name resolves to a local folder, or to the
configs of `openai/clip-vit-large-patch14` and `stabilityai/stable-diffusion-2-1-base` that ship with this package.
"""

import os
import re
from dataclasses import dataclass
from pathlib import Path

from diffusers import AutoencoderKL, DDPMScheduler, UNet2DConditionModel
from transformers import AutoImageProcessor, CLIPVisionConfig
from transformers.image_processing_utils import BaseImageProcessor

SHIPPED_CONFIGS = Path(__file__).parent / "upstream_configs"
HUB_REPO_ID = re.compile(r"[\w.-]+/[\w.-]+")
HUB_CACHE_FOLDER = re.compile(r"models--([\w.-]+?)--([\w.-]+)")
VISION_FILES = ("config.json", "preprocessor_config.json")
DIFFUSION_FILES = ("unet/config.json", "vae/config.json", "scheduler/scheduler_config.json")


@dataclass
class VisionParts:
    """What the vision side of a DreamLLM takes from its CLIP repo: the tower's config and the image processor."""

    config: CLIPVisionConfig
    image_processor: BaseImageProcessor


@dataclass
class DiffusionParts:
    """What the diffusion side takes from its Stable Diffusion repo: the UNet and VAE configs and the sampler."""

    unet_config: dict
    vae_config: dict
    scheduler: DDPMScheduler


def shipped_repo_ids() -> list[str]:
    """The Hub ids whose configs ship with the package."""
    return sorted(f"{owner.name}/{repo.name}" for owner in SHIPPED_CONFIGS.iterdir() for repo in owner.iterdir())


def hub_repo_id(name_or_path: str) -> str | None:
    """
    The `owner/name` a plugin setting refers to: the setting itself when it is a Hub id, or the repo of a path inside a
    Hub cache (`.../models--owner--name/snapshots/<revision>`, as the authors' training configs wrote); else `None`.
    """
    cached = HUB_CACHE_FOLDER.search(name_or_path)
    if cached:
        return f"{cached[1]}/{cached[2]}"
    return name_or_path if HUB_REPO_ID.fullmatch(name_or_path) else None


def resolve_upstream_folder(name_or_path: str | None, checkpoint_dir: Path, setting: str, override_flag: str) -> Path:
    """
    The local folder holding the upstream configs that the checkpoint setting `setting` names: a folder relative to
    the current directory, then relative to the checkpoint's parent (absolute paths as they are), else the shipped
    configs of the Hub repo it names.

    Raises:
        `FileNotFoundError`: naming the setting, the places looked at and `override_flag`.
    """
    if not name_or_path:
        raise FileNotFoundError(f"config.json does not set {setting}; pass {override_flag} DIR")
    for base in (Path.cwd(), checkpoint_dir.absolute().parent):
        candidate = base / name_or_path
        if candidate.is_dir():
            return candidate
    repo_id = hub_repo_id(name_or_path)
    if repo_id in shipped_repo_ids():
        return SHIPPED_CONFIGS / repo_id
    raise FileNotFoundError(
        f"{setting} is {name_or_path!r}: it is not a folder under {Path.cwd()} or {checkpoint_dir.absolute().parent}, "
        f"and dreamllm ships the configs of {', '.join(shipped_repo_ids())} only; pass {override_flag} DIR"
    )


def check_files(folder: Path, relative_paths: tuple[str, ...]):
    """Raises `FileNotFoundError` naming the first of `relative_paths` missing in `folder`."""
    for relative_path in relative_paths:
        if not (folder / relative_path).is_file():
            raise FileNotFoundError(f"{folder / relative_path} is missing")


def load_vision_parts(folder: str | os.PathLike) -> VisionParts:
    """
    The CLIP vision config (from a `CLIPVisionModel` or a whole `CLIPModel` config) and the CLIP image processor of a
    CLIP repo folder.
    """
    folder = Path(folder)
    check_files(folder, VISION_FILES)
    return VisionParts(
        config=CLIPVisionConfig.from_pretrained(folder), image_processor=AutoImageProcessor.from_pretrained(folder)
    )


def load_diffusion_parts(folder: str | os.PathLike) -> DiffusionParts:
    """
    The UNet and VAE configs of a Stable Diffusion folder, and DreamLLM's sampler: a `DDPMScheduler` built from the
    folder's scheduler config, as the original does (for SD 2.1-base: leading spacing, steps_offset 1, clip_sample
    false).
    """
    folder = Path(folder)
    check_files(folder, DIFFUSION_FILES)
    return DiffusionParts(
        unet_config=dict(UNet2DConditionModel.load_config(folder / "unet")),
        vae_config=dict(AutoencoderKL.load_config(folder / "vae")),
        scheduler=DDPMScheduler.from_config(DDPMScheduler.load_config(folder / "scheduler")),
    )
