"""LoRA on [`DreamLLMPipeline`] the diffusers way: `load_lora_weights`, `set_adapters`, `fuse_lora`, `unfuse_lora`,
`unload_lora_weights`, `get_active_adapters`, `get_list_adapters`.

An adapter folder (or Hub repo) may hold a DreamLLM language-model adapter, as `dreamllm.training` saves it
(`adapter_config.json` + `adapter_model.safetensors`, loaded into `pipe.model` with PEFT), and UNet LoRA weights in
diffusers' format (`pytorch_lora_weights.safetensors`, keys prefixed `unet.`, loaded into `pipe.unet`).
"""

import os
from pathlib import Path

from peft.tuners.lora import LoraLayer
from peft.tuners.tuners_utils import BaseTunerLayer
from safetensors import safe_open

LANGUAGE_MODEL_ADAPTER_CONFIG = "adapter_config.json"
UNET_LORA_WEIGHTS = "pytorch_lora_weights.safetensors"
UNET_PREFIX = "unet"
LORA_COMPONENTS = ("model", "unet")


class DreamLLMLoraLoaderMixin:
    """LoRA loading and switching for the `model` (language model) and `unet` components of a DreamLLMPipeline."""

    def load_lora_weights(self, pretrained_model_name_or_path: str | os.PathLike, adapter_name: str | None = None,
                          **download_kwargs):
        """
        Loads the adapters of a folder or Hub repo under `adapter_name` (default: `"default"` for the language model
        and diffusers' `default_{i}` for the UNet): the language-model adapter into `pipe.model`, UNet LoRA weights
        into `pipe.unet`. The loaded adapters become the active ones.

        Args:
            pretrained_model_name_or_path: A folder or Hub repo id holding `adapter_config.json` and/or
                `pytorch_lora_weights.safetensors`.
            adapter_name (`str`, *optional*): The name to load them under.
            **download_kwargs: `revision`, `token`, `cache_dir`, `local_files_only` for a Hub id.

        Raises:
            `FileNotFoundError`: when the folder holds neither kind of adapter. `ValueError`: when `adapter_name` is
            taken.
        """
        from .pipeline_dreamllm import resolve_pretrained_folder

        folder = resolve_pretrained_folder(pretrained_model_name_or_path, **download_kwargs)
        has_language_model_adapter = (folder / LANGUAGE_MODEL_ADAPTER_CONFIG).is_file()
        has_unet_lora = (folder / UNET_LORA_WEIGHTS).is_file()
        if not (has_language_model_adapter or has_unet_lora):
            raise FileNotFoundError(
                f"{folder} holds no LoRA adapter: neither {LANGUAGE_MODEL_ADAPTER_CONFIG} (a DreamLLM language-model "
                f"adapter) nor {UNET_LORA_WEIGHTS} (UNet LoRA weights)"
            )
        if any(adapter_name in names for names in self.get_list_adapters().values()):
            raise ValueError(f"An adapter named {adapter_name!r} is loaded already; pick another adapter_name")
        if has_language_model_adapter:
            self.model.load_adapter(str(folder), adapter_name=adapter_name or "default")
        if has_unet_lora:
            check_unet_lora(folder / UNET_LORA_WEIGHTS)
            self.unet.load_lora_adapter(str(folder), weight_name=UNET_LORA_WEIGHTS, prefix=UNET_PREFIX,
                                        adapter_name=adapter_name)

    def get_list_adapters(self) -> dict[str, list[str]]:
        """The adapters loaded in each component: `{"model": [...], "unet": [...]}` (components with none left out)."""
        adapters = {}
        if getattr(self.model, "_hf_peft_config_loaded", False):
            adapters["model"] = list(self.model.peft_config)
        if getattr(self.unet, "peft_config", None):
            adapters["unet"] = list(self.unet.peft_config)
        return adapters

    def get_active_adapters(self) -> list[str]:
        """The names of the active adapters, over both components."""
        active = []
        if "model" in self.get_list_adapters():
            active += self.model.active_adapters()
        if "unet" in self.get_list_adapters():
            active += [name for name in self.unet.active_adapters() if name not in active]
        return active

    def set_adapters(self, adapter_names: str | list[str], adapter_weights: float | list[float] | None = None):
        """
        Activates `adapter_names` (in each component that holds them), scaled by `adapter_weights` (one weight, or one
        per name; default 1.0).

        Raises:
            `ValueError`: naming an adapter no component holds, or when the weights do not match the names.
        """
        names = [adapter_names] if isinstance(adapter_names, str) else list(adapter_names)
        weight = 1.0 if adapter_weights is None else adapter_weights
        weights = list(weight) if isinstance(weight, (list, tuple)) else [weight] * len(names)
        if len(weights) != len(names):
            raise ValueError(f"Got {len(weights)} adapter_weights for {len(names)} adapter_names")
        loaded = self.get_list_adapters()
        unknown = [name for name in names if not any(name in component for component in loaded.values())]
        if unknown:
            raise ValueError(f"No adapter named {', '.join(unknown)} is loaded; loaded: {loaded}")
        model_names = [name for name in names if name in loaded.get("model", [])]
        if model_names:
            self.model.set_adapter(model_names)
            for name, weight in zip(names, weights):
                if name in model_names:
                    scale_lora_layers(self.model, name, weight)
        unet_names = [name for name in names if name in loaded.get("unet", [])]
        if unet_names:
            self.unet.set_adapters(unet_names, [w for n, w in zip(names, weights) if n in unet_names])

    def fuse_lora(self, components: list[str] = list(LORA_COMPONENTS), lora_scale: float = 1.0,
                  adapter_names: list[str] | None = None):
        """
        Merges the LoRA weights (active adapters, or `adapter_names`) into the base weights of `components`, so that
        inference pays nothing for them; [`unfuse_lora`] undoes it.
        """
        check_lora_components(components)
        if "model" in components and "model" in self.get_list_adapters():
            names = adapter_names or self.model.active_adapters()
            for layer in lora_layers(self.model):
                if lora_scale != 1.0:
                    layer.scale_layer(lora_scale)
                layer.merge(adapter_names=[name for name in names if name in layer.lora_A])
        if "unet" in components and "unet" in self.get_list_adapters():
            self.unet.fuse_lora(lora_scale=lora_scale, adapter_names=adapter_names)

    def unfuse_lora(self, components: list[str] = list(LORA_COMPONENTS)):
        """Takes fused LoRA weights back out of the base weights of `components`."""
        check_lora_components(components)
        if "model" in components:
            for layer in lora_layers(self.model):
                if layer.merged:
                    layer.unmerge()
        if "unet" in components and "unet" in self.get_list_adapters():
            self.unet.unfuse_lora()

    def unload_lora_weights(self):
        """Removes every adapter from both components: the pipeline computes what it computed before loading any."""
        adapters = self.get_list_adapters()
        if "model" in adapters:
            self.unfuse_lora(["model"])
            self.model.delete_adapter(adapters["model"])
        if "unet" in adapters:
            self.unet.unload_lora()


def check_unet_lora(path: Path):
    """Raises a `ValueError` when a diffusers LoRA file holds no UNet weights (keys prefixed `unet.`)."""
    with safe_open(path, "pt") as weights:
        keys = list(weights.keys())
    if not any(key.startswith(f"{UNET_PREFIX}.") for key in keys):
        raise ValueError(f"{path} holds no UNet LoRA weights (keys prefixed '{UNET_PREFIX}.')")


def lora_layers(module) -> list[LoraLayer]:
    """The PEFT LoRA layers inside `module`."""
    return [layer for layer in module.modules() if isinstance(layer, LoraLayer) and isinstance(layer, BaseTunerLayer)]


def scale_lora_layers(module, adapter_name: str, weight: float):
    """Sets the weight of adapter `adapter_name` in every LoRA layer of `module` (as diffusers' `set_adapters`)."""
    for layer in lora_layers(module):
        if adapter_name in layer.lora_A:
            layer.set_scale(adapter_name, weight)


def check_lora_components(components: list[str]):
    """Raises a `ValueError` naming a component that cannot hold LoRA."""
    unknown = sorted(set(components) - set(LORA_COMPONENTS))
    if unknown:
        raise ValueError(f"LoRA components are {', '.join(LORA_COMPONENTS)}; got {', '.join(unknown)}")


__all__ = ["DreamLLMLoraLoaderMixin"]
