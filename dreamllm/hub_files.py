"""The loader files a saved DreamLLM folder carries, so that generic Hugging Face entry points load it.

Every folder written by `DreamLLMPipeline.save_pretrained` (and so by `dreamllm convert` and `dreamllm train`) gets
`dreamllm_loader.py`: a few lines that import the installed `dreamllm` package and re-export its classes, never a
copy of its code. `config.json`, `processor_config.json` and `tokenizer_config.json` point their `auto_map` at it,
and `model_index.json` names it as the custom pipeline (`_class_name: ["dreamllm_loader", "DreamLLMPipeline"]`), so
in a process that never imported `dreamllm`, `AutoConfig`, `AutoModel`, `AutoModelForCausalLM`,
`AutoModelForImageTextToText`, `AutoProcessor` and `DiffusionPipeline` `.from_pretrained(folder,
trust_remote_code=True)` load the DreamLLM classes.
"""

import json
from pathlib import Path

from dreamllm.file_utils import is_local_path

LOADER_MODULE = "dreamllm_loader"
INSTALL_HINT = "it is not on PyPI: run `pip install .` in a checkout of its source"
MODEL_AUTO_MAP = {
    "AutoConfig": "DreamLLMConfig",
    "AutoModel": "DreamLLMModel",
    "AutoModelForCausalLM": "DreamLLMForCausalLM",
    "AutoModelForImageTextToText": "DreamLLMForCausalLM",
}
PROCESSOR_AUTO_MAP = {"AutoProcessor": "DreamLLMProcessor"}
PROCESSOR_CONFIG_FILES = ("processor_config.json", "tokenizer_config.json")
PIPELINE_CLASS = "DreamLLMPipeline"
LOADER_SOURCE = f'''"""Loads DreamLLM through the Hugging Face Auto classes and DiffusionPipeline from the installed `dreamllm` package."""

try:
    from dreamllm import (
        DreamLLMConfig,
        DreamLLMForCausalLM,
        DreamLLMModel,
        DreamLLMPipeline,
        DreamLLMProcessor,
    )
except ImportError as error:
    raise ImportError(
        "This DreamLLM repo needs the `dreamllm` package installed; {INSTALL_HINT}"
    ) from error

__all__ = ["DreamLLMConfig", "DreamLLMForCausalLM", "DreamLLMModel", "DreamLLMPipeline", "DreamLLMProcessor"]
'''


def write_loader_files(folder: str | Path) -> None:
    """
    Writes `dreamllm_loader.py` into a saved DreamLLM `folder` and points the `auto_map` of its configs and the
    `_class_name` of its `model_index.json` at it (see the module docstring). Config files the folder lacks are
    left out; the folder is expected to be a staging folder that is published atomically afterwards.
    """
    folder = Path(folder)
    (folder / f"{LOADER_MODULE}.py").write_text(LOADER_SOURCE)
    update_json(folder / "config.json", auto_map=qualified(MODEL_AUTO_MAP))
    for name in PROCESSOR_CONFIG_FILES:
        update_json(folder / name, auto_map=qualified(PROCESSOR_AUTO_MAP))
    update_json(folder / "model_index.json", _class_name=[LOADER_MODULE, PIPELINE_CLASS])


class NoSourceCopy:
    """
    Every saved config, model and processor folder names the installed package's classes through
    `dreamllm_loader.py`, never through a copy of the code: transformers would copy DreamLLM's source files into a
    folder saved after a `trust_remote_code` load (which registers the loaded class for auto loading).
    """

    @classmethod
    def register_for_auto_class(cls, auto_class=None):
        """Does nothing: the folder's `dreamllm_loader.py` (see `write_loader_files`) names the class."""

    def save_pretrained(self, save_directory, *args, **kwargs):
        """
        Saves as transformers does, then writes the loader file and `auto_map` entries (`write_loader_files`) on the
        main process only (`is_main_process=False` on the others, as transformers' own files).
        """
        saved = super().save_pretrained(save_directory, *args, **kwargs)
        if kwargs.get("is_main_process", True):
            write_loader_files(save_directory)
        return saved


def hub_model_id(name_or_path: str | None) -> str | None:
    """
    `name_or_path` when it is a Hub repo id (`"owner/name"` or `"name"`), else `None`: a local folder (absolute,
    `~/...`, `./...`, or existing on this machine) is never published as a model's origin.
    """
    if not name_or_path or is_local_path(name_or_path) or name_or_path.startswith(".") or name_or_path.count("/") > 1:
        return None
    return name_or_path


def qualified(auto_map: dict[str, str]) -> dict[str, str]:
    """`auto_map` with each class name prefixed by the loader module, as transformers' remote code expects."""
    return {auto_class: f"{LOADER_MODULE}.{class_name}" for auto_class, class_name in auto_map.items()}


def update_json(path: Path, **entries) -> None:
    """Sets `entries` in the JSON object stored at `path`, when that file exists."""
    if not path.is_file():
        return
    content = json.loads(path.read_text())
    content.update(entries)
    path.write_text(json.dumps(content, indent=2, sort_keys=True) + "\n")


__all__ = ["INSTALL_HINT", "LOADER_MODULE", "NoSourceCopy", "hub_model_id", "write_loader_files"]
