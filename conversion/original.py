"""The original DreamLLM release layout: what its config.json says and where each of its tensors belongs.

A release folder holds `config.json` (the Llama fields at the top level, `special_tokens2ids_dict`,
`plugins_init_kwargs`, `plugins_type`, loss weights), the language model (`model.safetensors`, sharded safetensors
with an index, or `pytorch_model.bin`), one `<plugin>.bin` per plugin (the CLIP vision embedding, the dream
embedding and the Stable Diffusion head) and the slow Llama tokenizer files.
"""

import json
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from dreamllm.processing.tokenization_dreamllm import DREAMLLM_SPECIAL_TOKENS, PAD_TOKEN

# Our config field -> the token whose id it holds.
TOKEN_ID_FIELDS = {"pad_token_id": PAD_TOKEN} | {f"{name}_id": token for name, token in DREAMLLM_SPECIAL_TOKENS.items()}

# The Llama hyper-parameters the original config.json carries at its top level.
LLAMA_FIELDS = (
    "vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
    "num_key_value_heads", "hidden_act", "max_position_embeddings", "initializer_range", "rms_norm_eps",
    "bos_token_id", "eos_token_id", "pad_token_id", "rope_theta", "rope_scaling", "attention_bias",
    "pretraining_tp", "tie_word_embeddings", "use_cache",
)  # fmt: skip
REQUIRED_LLAMA_FIELDS = ("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads")

# Plugin role -> the class name that ends its `_target_`, and where the original puts its keys in a whole-model
# state dict when `plugins_type` does not say.
PLUGIN_CLASSES = {"vision": "CLIPVisionEmbedding", "dream": "DreamEmbedding", "diffusion": "StableDiffusionHead"}
DEFAULT_PLUGIN_TYPES = {"vision": "embedding", "dream": "embedding", "diffusion": "head"}

# The main-weights layouts transformers 4.35 wrote, in the order it preferred them.
MAIN_WEIGHTS_INDEXES = ("model.safetensors.index.json", "pytorch_model.bin.index.json")
MAIN_WEIGHTS_FILES = ("model.safetensors", "pytorch_model.bin")


@dataclass(frozen=True)
class Rename:
    """Tensors whose name starts with `source_prefix` go to `component` (model, unet or vae), the prefix replaced by
    `target_prefix`; with `batch_dim`, the source may carry an extra leading dimension of size 1 that ours lacks."""

    source_prefix: str
    component: str
    target_prefix: str
    batch_dim: bool = False

    def target_key(self, key: str) -> str:
        return self.target_prefix + key[len(self.source_prefix) :]

    def source_key(self, target_key: str) -> str:
        return self.source_prefix + target_key[len(self.target_prefix) :]


# Where the language-model files put each tensor.
LANGUAGE_MODEL_RENAMES = (Rename("lm_head.", "model", "lm_head."), Rename("model.", "model", "model.language_model."))


@dataclass(frozen=True)
class WeightsSource:
    """One input weights file: how its tensor names map to ours, and which of its tensors are dropped on purpose."""

    path: Path
    renames: tuple[Rename, ...]
    is_ignored: Callable[[str], bool]

    def rename_for(self, key: str) -> Rename | None:
        """The rename rule that applies to the source tensor `key`, if any."""
        return next((rename for rename in self.renames if key.startswith(rename.source_prefix)), None)


@dataclass(frozen=True)
class Plugin:
    """A `plugins_init_kwargs` entry: its name (also the stem of its weights file) and its constructor settings."""

    name: str
    settings: dict
    plugin_type: str

    @property
    def prefix_in_main_weights(self) -> str:
        """Where the original's whole-model state dict (e.g. an FSDP save) puts this plugin's tensors."""
        return f"model.{self.name}." if self.plugin_type == "embedding" else f"{self.name}."


def read_json(path: Path) -> dict:
    """The JSON object in `path`, with errors naming the file."""
    if not path.is_file():
        raise FileNotFoundError(f"{path} is missing")
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise ValueError(f"{path} is not valid JSON: {error}") from error


class OriginalCheckpoint:
    """
    An original DreamLLM release folder, read lazily: the config at construction, the weights when asked.

    Plugin paths in the config (`pretrained_model_name_or_path`: null, "none" or a stale training path) are ignored:
    every plugin's weights are read from `<folder>/<plugin name>.bin`, as the original loader does when called with
    `reset_plugin_model_name_or_path=True` (which every official script does).
    """

    def __init__(self, folder: str | os.PathLike):
        self.folder = Path(folder)
        if not self.folder.is_dir():
            raise FileNotFoundError(f"{self.folder} is not a folder")
        self.config_file = self.folder / "config.json"
        self.config = read_json(self.config_file)
        if self.config.get("model_type") != "dreamllm":
            raise ValueError(f"{self.config_file} has model_type {self.config.get('model_type')!r}, not 'dreamllm'")
        self.plugins = self.find_plugins()

    def find_plugins(self) -> dict[str, Plugin]:
        """The three plugins by role (vision, dream, diffusion), recognized by the class their `_target_` names."""
        entries = self.config.get("plugins_init_kwargs") or {}
        plugin_types = self.config.get("plugins_type") or {}
        plugins = {}
        for name, settings in entries.items():
            class_name = str(settings.get("_target_", "")).rsplit(".", 1)[-1]
            role = next((role for role, expected in PLUGIN_CLASSES.items() if expected == class_name), None)
            if role is None:
                raise ValueError(
                    f"{self.config_file}: plugins_init_kwargs.{name} is a {class_name!r}, not a DreamLLM plugin"
                )
            if role in plugins:
                raise ValueError(f"{self.config_file}: plugins_init_kwargs has two {class_name} entries")
            plugins[role] = Plugin(name, settings, plugin_types.get(name, DEFAULT_PLUGIN_TYPES[role]))
        missing = [PLUGIN_CLASSES[role] for role in PLUGIN_CLASSES if role not in plugins]
        if missing:
            raise ValueError(f"{self.config_file}: plugins_init_kwargs has no {', '.join(missing)} entry")
        return plugins

    def plugin_setting(self, role: str, name: str, default=None):
        """A constructor setting of a plugin (`default` when absent)."""
        return self.plugins[role].settings.get(name, default)

    def setting_name(self, role: str, name: str) -> str:
        """How a plugin setting is spelled in config.json, for error messages."""
        return f"plugins_init_kwargs.{self.plugins[role].name}.{name}"

    def text_config(self) -> dict:
        """The Llama config of the language model, from the top-level fields of config.json."""
        missing = [field for field in REQUIRED_LLAMA_FIELDS if field not in self.config]
        if missing:
            raise ValueError(f"{self.config_file} lacks the language-model fields {missing}")
        return {field: self.config[field] for field in LLAMA_FIELDS if field in self.config}

    def special_token_ids(self) -> dict[str, int]:
        """The ids of the eight DreamLLM tokens by our config field name, from `special_tokens2ids_dict`."""
        ids = self.token_ids_by_token()
        missing = [token for token in TOKEN_ID_FIELDS.values() if token not in ids]
        if missing:
            raise ValueError(f"{self.config_file}: special_tokens2ids_dict has no id for {missing}")
        return {field: ids[token] for field, token in TOKEN_ID_FIELDS.items()}

    def token_ids_by_token(self) -> dict[str, int]:
        """Every token -> id of `special_tokens2ids_dict` (top level and nested lists such as additional tokens)."""
        ids = {}
        for key, value in (self.config.get("special_tokens2ids_dict") or {}).items():
            ids.update(value if isinstance(value, dict) else {key: value})
        return ids

    def check_supported_plugins(self):
        """Raises a `ValueError` naming the settings with which a plugin is configured as the release never was."""
        hidden_size = self.config["hidden_size"]
        supported = {
            ("vision", "projector_type"): "linear",
            ("vision", "projector_depth"): 1,
            ("vision", "use_additional_post_layernorm"): False,
            ("diffusion", "projector_type"): "linear",
            ("diffusion", "projector_depth"): 1,
        } | {(role, "embed_hidden_size"): hidden_size for role in PLUGIN_CLASSES}
        unsupported = {
            self.setting_name(role, name): value
            for (role, name), wanted in supported.items()
            if (value := self.plugin_setting(role, name, wanted)) != wanted
        }
        if unsupported:
            raise ValueError(
                f"{self.config_file}: unsupported plugin settings {unsupported} (DreamLLM uses linear projectors of "
                f"depth 1, no extra post-layernorm, and plugins as wide as the language model, {hidden_size})"
            )

    def main_weight_files(self) -> list[Path]:
        """The language-model weight files: the shards of an index, `model.safetensors` or `pytorch_model.bin`."""
        for index_name in MAIN_WEIGHTS_INDEXES:
            if (self.folder / index_name).is_file():
                return self.shards_of_index(self.folder / index_name)
        for file_name in MAIN_WEIGHTS_FILES:
            if (self.folder / file_name).is_file():
                return [self.folder / file_name]
        raise FileNotFoundError(
            f"{self.folder} holds no language-model weights (looked for "
            f"{', '.join(MAIN_WEIGHTS_INDEXES + MAIN_WEIGHTS_FILES)})"
        )

    def shards_of_index(self, index_file: Path) -> list[Path]:
        """The shard files an index names, in order, each checked to exist."""
        weight_map = read_json(index_file).get("weight_map")
        if not isinstance(weight_map, dict) or not weight_map:
            raise ValueError(f"{index_file} has no weight_map")
        shards = [self.folder / name for name in dict.fromkeys(sorted(weight_map.values()))]
        for shard in shards:
            if not shard.is_file():
                raise FileNotFoundError(f"{shard} is missing (named in {index_file.name})")
        return shards

    def plugin_prefixes_in_main_weights(self) -> tuple[str, ...]:
        return tuple(plugin.prefix_in_main_weights for plugin in self.plugins.values())

    def main_sources(self) -> list[WeightsSource]:
        """
        The language-model files. Their plugin tensors (whole-model saves carry copies) and the rotary `inv_freq`
        buffers are dropped: the original loader ignores both.
        """
        plugin_prefixes = self.plugin_prefixes_in_main_weights()

        def is_ignored(key: str) -> bool:
            return key.endswith("rotary_emb.inv_freq") or key.startswith(plugin_prefixes)

        return [WeightsSource(path, LANGUAGE_MODEL_RENAMES, is_ignored) for path in self.main_weight_files()]

    def plugin_sources(self) -> list[WeightsSource]:
        """
        The three plugin files: the CLIP vision tower and its projector, the dream queries, and the UNet, VAE and
        dream projector of the Stable Diffusion head. CLIP's `position_ids` buffer, present in some saves, is dropped.
        """
        clip_position_ids = "clip_vision_model.vision_model.embeddings.position_ids"
        return [
            WeightsSource(
                self.plugin_file("vision"),
                (
                    Rename("clip_vision_model.vision_model.", "model", "model.vision_tower."),
                    Rename("projector.projector.", "model", "model.vision_projector."),
                ),
                lambda key: key == clip_position_ids,
            ),
            WeightsSource(
                self.plugin_file("dream"),
                (Rename("dream_queries", "model", "model.dream_queries.weight", batch_dim=True),),
                lambda key: False,
            ),
            WeightsSource(
                self.plugin_file("diffusion"),
                (
                    Rename("unet.", "unet", ""),
                    Rename("vae.", "vae", ""),
                    Rename("projector.projector.", "model", "model.dream_projector."),
                ),
                lambda key: False,
            ),
        ]

    def plugin_file(self, role: str) -> Path:
        return self.folder / f"{self.plugins[role].name}.bin"
