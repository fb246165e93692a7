"""The loading options of `DreamLLMPipeline.from_pretrained`, resolved per component as diffusers resolves them.

`DiffusionPipeline.from_pretrained` cannot load the DreamLLM layout itself (the language model and processor sit at the
top of the folder, not in subfolders), so these options are parsed and checked here, then handed to each component's
own `from_pretrained`: `dtype` (one, or a per-component dict with a `"default"`), `variant`, `device_map`
(`"balanced"`, an accelerator or `"cpu"`), `low_cpu_mem_usage`, `quantization_config` and the Hub download options.
"""

import json
import re
from dataclasses import dataclass, field
from pathlib import Path

import torch
from accelerate.utils import get_max_memory
from diffusers.pipelines.pipeline_loading_utils import _assign_components_to_devices
from diffusers.pipelines.pipeline_utils import SUPPORTED_DEVICE_MAP
from diffusers.quantizers import PipelineQuantizationConfig
from safetensors import SafetensorError, safe_open
from transformers.utils.quantization_config import QuantizationConfigMixin

COMPONENTS = ("model", "processor", "unet", "vae", "scheduler")
WEIGHTED_COMPONENTS = ("model", "unet", "vae")
DOWNLOAD_OPTIONS = ("revision", "token", "cache_dir", "local_files_only", "force_download")
LOADING_OPTIONS = (
    "dtype", "torch_dtype", "variant", "device_map", "max_memory", "low_cpu_mem_usage", "quantization_config",
    "attn_implementation", "use_safetensors", *DOWNLOAD_OPTIONS,
)
SAFETENSORS_DTYPES = {"F64": torch.float64, "F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16}


@dataclass
class LoadingOptions:
    """The options of one `DreamLLMPipeline.from_pretrained` call, checked (see the module docstring)."""

    dtype: torch.dtype | dict[str, torch.dtype] | None = None
    variant: str | None = None
    device_map: str | None = None
    max_memory: dict | None = None
    low_cpu_mem_usage: bool = True
    quantization_config: PipelineQuantizationConfig | QuantizationConfigMixin | None = None
    attn_implementation: str | None = None
    download: dict = field(default_factory=dict)

    @classmethod
    def pop_from(cls, kwargs: dict) -> "LoadingOptions":
        """
        Takes the loading options out of `kwargs` and checks them.

        Raises:
            `TypeError`: naming every argument that is neither a loading option nor a component, or an option of the
                wrong type. `ValueError`: naming an option value that cannot be used.
        """
        unknown = sorted(set(kwargs) - set(LOADING_OPTIONS) - set(COMPONENTS))
        if unknown:
            raise TypeError(
                f"DreamLLMPipeline.from_pretrained got unsupported argument(s): {', '.join(unknown)}; it takes the "
                f"components {', '.join(COMPONENTS)} and the options {', '.join(LOADING_OPTIONS)}"
            )
        if "dtype" in kwargs and "torch_dtype" in kwargs:
            raise TypeError("Pass dtype or torch_dtype, not both")
        if kwargs.pop("use_safetensors", True) is False:
            raise ValueError("use_safetensors=False: DreamLLM pipelines are saved and loaded as safetensors only")
        options = cls(
            dtype=kwargs.pop("dtype", None) or kwargs.pop("torch_dtype", None),
            variant=kwargs.pop("variant", None),
            device_map=kwargs.pop("device_map", None),
            max_memory=kwargs.pop("max_memory", None),
            low_cpu_mem_usage=kwargs.pop("low_cpu_mem_usage", True),
            quantization_config=kwargs.pop("quantization_config", None),
            attn_implementation=kwargs.pop("attn_implementation", None),
            download={name: kwargs.pop(name) for name in DOWNLOAD_OPTIONS if name in kwargs},
        )
        options.check()
        return options

    def check(self):
        """Raises a `TypeError` or `ValueError` naming an option that cannot be used."""
        dtypes = self.dtype.values() if isinstance(self.dtype, dict) else [self.dtype]
        if not all(dtype is None or isinstance(dtype, torch.dtype) for dtype in dtypes):
            raise TypeError(f"dtype must be a torch.dtype or a dict of them per component, got {self.dtype!r}")
        if isinstance(self.dtype, dict):
            unknown = sorted(set(self.dtype) - set(WEIGHTED_COMPONENTS) - {"default"})
            if unknown:
                raise ValueError(f"dtype names unknown component(s) {', '.join(unknown)}; components with weights "
                                 f"are {', '.join(WEIGHTED_COMPONENTS)} (and 'default' for the others)")
        if self.variant is not None and not (isinstance(self.variant, str) and re.fullmatch(r"[\w-]+", self.variant)):
            raise ValueError(f"variant must be a name such as 'fp16', got {self.variant!r}")
        if self.device_map is not None and self.device_map not in SUPPORTED_DEVICE_MAP:
            supported = ", ".join(dict.fromkeys(SUPPORTED_DEVICE_MAP))
            raise ValueError(f"device_map {self.device_map!r} is not supported; use one of {supported}")
        if self.max_memory is not None and self.device_map is None:
            raise ValueError("max_memory bounds the devices of a device_map; pass device_map too")
        if self.device_map is not None and not self.low_cpu_mem_usage:
            raise ValueError(f"low_cpu_mem_usage=False cannot be combined with device_map={self.device_map!r}")
        if self.quantization_config is not None and not isinstance(
            self.quantization_config, (PipelineQuantizationConfig, QuantizationConfigMixin)
        ):
            raise TypeError(
                "quantization_config must be a diffusers PipelineQuantizationConfig, or a transformers quantization "
                f"config for the language model, got {type(self.quantization_config).__name__}"
            )

    def component_dtype(self, name: str, weights_folder: Path) -> torch.dtype:
        """
        The dtype component `name` loads in: from the dict (else its `"default"`, else float32, as diffusers does),
        the one dtype given, or without any the dtype its checkpoint was saved in.
        """
        if isinstance(self.dtype, dict):
            return self.dtype.get(name, self.dtype.get("default", torch.float32))
        return self.dtype or checkpoint_dtype(weights_folder, self.variant)

    def component_quantization(self, name: str):
        """The quantization config of component `name`, or `None` when it is not quantized."""
        config = self.quantization_config
        if isinstance(config, PipelineQuantizationConfig):
            return config._resolve_quant_config(is_diffusers=name != "model", module_name=name)
        return config if name == "model" else None

    def component_kwargs(self, name: str, weights_folder: Path, variants: set[str], device) -> dict:
        """The `from_pretrained` arguments of component `name` (`model`, `unet` or `vae`)."""
        kwargs = {"dtype": self.component_dtype(name, weights_folder)}
        if name in variants:
            kwargs["variant"] = self.variant
        if device is not None:
            kwargs["device_map"] = device if isinstance(device, str) else {"": device}
            if self.max_memory is not None:
                kwargs["max_memory"] = self.max_memory
        quantization = self.component_quantization(name)
        if quantization is not None:
            kwargs["quantization_config"] = quantization
        if name == "model":
            if self.attn_implementation is not None:
                kwargs["attn_implementation"] = self.attn_implementation
        else:
            kwargs["low_cpu_mem_usage"] = self.low_cpu_mem_usage
        return kwargs

    def component_devices(self, weights_folders: dict[str, Path]) -> dict[str, object]:
        """
        The device of each weighted component: all on `device_map` when it names a device; for `"balanced"`, whole
        components spread over the accelerators by size as diffusers spreads them (on the CPU when there are none).
        """
        if self.device_map is None:
            return {}
        if self.device_map != "balanced":
            return {name: self.device_map for name in weights_folders}
        accelerators = {key: value for key, value in get_max_memory(self.max_memory).items() if key != "cpu"}
        if not accelerators:
            return {}
        sizes = {name: weights_size(folder, self.variant) for name, folder in weights_folders.items()}
        sizes = dict(sorted(sizes.items(), key=lambda item: item[1], reverse=True))
        memory = dict(sorted(accelerators.items(), key=lambda item: item[1], reverse=True))
        assignment = _assign_components_to_devices(sizes, memory, device_mapping_strategy="balanced")
        return {component: device for device, components in assignment.items() for component in components}


    def final_device_map(self, devices: dict[str, object]) -> str | dict[str, object] | None:
        """The pipeline's `hf_device_map`, as diffusers sets it: the device named, or the `"balanced"` assignment."""
        return (devices or None) if self.device_map == "balanced" else self.device_map


def weight_files(folder: Path, variant: str | None) -> list[Path]:
    """The safetensors weight files directly in `folder` of `variant` (or of no variant)."""
    files = sorted(folder.glob("*.safetensors"))
    return [path for path in files if file_variant(path.name) == variant]


def file_variant(file_name: str) -> str | None:
    """The variant of a weight file name (`model.fp16.safetensors`, `model.fp16-00001-of-00002.safetensors`)."""
    match = re.fullmatch(r"[^.]+\.([\w-]+?)(-\d+-of-\d+)?\.safetensors", file_name)
    return None if match is None else match.group(1)


def components_with_variant(weights_folders: dict[str, Path], variant: str | None) -> set[str]:
    """
    The components whose weights exist in `variant`.

    Raises:
        `ValueError`: when `variant` is given and no component has it (as diffusers raises).
    """
    if variant is None:
        return set()
    found = {name for name, folder in weights_folders.items() if weight_files(folder, variant)}
    if not found:
        raise ValueError(
            f"You are trying to load the model files of the `variant={variant}`, but no such modeling files are "
            f"available (no *.{variant}.safetensors in {', '.join(sorted(str(f) for f in weights_folders.values()))})"
        )
    return found


def check_saved_files(folders: list[Path], weights_folders: dict[str, Path], variant: str | None):
    """
    Reads what loading will read, before any loading: every JSON file of `folders` parses to an object, and each
    weighted component has weights whose safetensors headers are whole (a truncated file is caught here).

    Raises:
        `ValueError` / `FileNotFoundError`: naming the damaged or missing file and what is wrong with it.
    """
    for folder in folders:
        for path in sorted(folder.glob("*.json")):
            try:
                content = json.loads(path.read_text(encoding="utf-8"))
            except (UnicodeDecodeError, json.JSONDecodeError) as error:
                raise ValueError(f"{path} is not valid JSON ({error}): the saved pipeline is damaged") from None
            if not isinstance(content, dict):
                raise ValueError(f"{path} holds a JSON {type(content).__name__}, not an object: the saved pipeline "
                                 f"is damaged")
    for name, folder in weights_folders.items():
        files = weight_files(folder, variant) or weight_files(folder, None)
        if not files:
            raise FileNotFoundError(f"{folder} holds no *.safetensors weights for the {name} component")
        for path in files:
            try:
                with safe_open(path, "pt"):
                    pass
            except SafetensorError as error:
                raise ValueError(f"{path} is damaged (a truncated or corrupt safetensors file: {error})") from None


def checkpoint_dtype(folder: Path, variant: str | None) -> torch.dtype:
    """The floating dtype the weights in `folder` were saved in (float32 when it holds no floating tensor)."""
    files = weight_files(folder, variant) or weight_files(folder, None)
    for path in files:
        with safe_open(path, "pt") as weights:
            for key in weights.keys():
                dtype = SAFETENSORS_DTYPES.get(weights.get_slice(key).get_dtype())
                if dtype is not None:
                    return dtype
    return torch.float32


def weights_size(folder: Path, variant: str | None) -> int:
    """Bytes of the weights in `folder` (of `variant` where it has them)."""
    files = weight_files(folder, variant) or weight_files(folder, None)
    return sum(path.stat().st_size for path in files)


__all__ = ["LoadingOptions", "check_saved_files", "components_with_variant"]
