"""LoRA fine-tuning of DreamLLM with PEFT.

LoRA goes on the language model's attention and MLP projections only: the CLIP vision tower has layers with the same
names (`q_proj`, `k_proj`, ...), so the targets are a regular expression anchored at `model.language_model`. The
dream queries and both projectors are small and specific to DreamLLM: they train fully (`modules_to_save`). The rows
of DreamLLM's added tokens in the input embeddings and the LM head train through `trainable_token_indices`, so an
adapter stores those few rows rather than two whole vocabulary-sized matrices.

An adapter folder loads with `PeftModel.from_pretrained(model, folder)` or `model.load_adapter(folder)` and merges
with `merge_and_unload()`; inside a [`DreamLLMPipeline`], load it into `pipe.model` with `load_adapter`.
"""

import json
import os
import tempfile
from pathlib import Path

from huggingface_hub import ModelCard
from peft import LoraConfig, PeftModel, get_peft_model

from dreamllm.hub_files import hub_model_id
from dreamllm.modeling_dreamllm import DreamLLMConfig, DreamLLMForCausalLM
from dreamllm.pipelines.hub import card_metadata, training_section, upload_folder_with_card

LANGUAGE_MODEL_LORA_TARGETS = (
    r"model\.language_model\.layers\.\d+\.(self_attn\.(q|k|v|o)_proj|mlp\.(gate|up|down)_proj)"
)
FULLY_TRAINED_MODULES = ["dream_queries", "vision_projector", "dream_projector"]
UNKNOWN_BASE_MODEL = "path/to/base-dreamllm"
TAGS = ["dreamllm", "lora", "peft", "text-to-image", "image-text-to-text", "interleaved-generation"]

ADAPTER_CARD = '''
# DreamLLM LoRA adapter

A LoRA adapter for [DreamLLM](https://arxiv.org/abs/2309.11499) (ICLR 2024), the language model that reads and writes
images inside free-form documents. Base model: `{base_model}`.

LoRA sits on the language model's attention and MLP projections; the dream queries, the vision projector and the
dream projector are trained fully, and the rows of DreamLLM's special tokens in the embeddings and the LM head train
on their own.

## Usage

```python
import dreamllm
from dreamllm import DreamLLMPipeline
from peft import PeftModel

pipe = DreamLLMPipeline.from_pretrained("{base_model}")
pipe.model.load_adapter("{repo_id}")  # or: PeftModel.from_pretrained(pipe.model, "{repo_id}").merge_and_unload()
document = pipe("Write a short illustrated story about a fox.").documents[0]
```
'''


def dreamllm_lora_config(
    config: DreamLLMConfig, r: int = 16, lora_alpha: int = 32, lora_dropout: float = 0.05
) -> LoraConfig:
    """
    The LoRA configuration of DreamLLM fine-tuning: LoRA on the language model's linear layers only, the dream
    queries and both projectors trained fully, and the rows of the added special tokens trainable in the input
    embeddings and the LM head.

    Args:
        config ([`DreamLLMConfig`]): The model's configuration (gives the special-token ids).
        r, lora_alpha, lora_dropout: As for [`peft.LoraConfig`].
    """
    token_ids = sorted(config.special_token_ids.values())
    return LoraConfig(
        r=r,
        lora_alpha=lora_alpha,
        lora_dropout=lora_dropout,
        target_modules=LANGUAGE_MODEL_LORA_TARGETS,
        modules_to_save=list(FULLY_TRAINED_MODULES),
        trainable_token_indices={"embed_tokens": token_ids, "lm_head": token_ids},
        task_type="CAUSAL_LM",
    )


def apply_lora(model: DreamLLMForCausalLM, lora_config: LoraConfig | None = None) -> PeftModel:
    """Wraps `model` for LoRA training (default configuration: [`dreamllm_lora_config`])."""
    return get_peft_model(model, lora_config or dreamllm_lora_config(model.config))


def adapter_model_card(
    repo_id: str, base_model: str | None, license: str | None = None, training: dict | None = None
) -> ModelCard:
    """
    The model card of a DreamLLM LoRA adapter: PEFT metadata, the base model (when it is a Hub id: a local path is
    never written), the license when known, tags, a usage snippet and, for a trained adapter, the `training` settings
    of its run (in the text and under `dreamllm.training` in the metadata).
    """
    metadata = card_metadata("peft", TAGS, license, base_model, training=training)
    text = ADAPTER_CARD.format(repo_id=repo_id, base_model=hub_model_id(base_model) or UNKNOWN_BASE_MODEL)
    return ModelCard(f"---\n{metadata.to_yaml()}\n---\n{text}{training_section(training)}")


def remove_local_base_model(adapter_dir: str | os.PathLike):
    """
    Drops `base_model_name_or_path` from a saved adapter's `adapter_config.json` when it names a local folder: a path
    of this machine never goes into a saved file (`PeftModel.from_pretrained(model, folder)` does not need it).
    """
    path = Path(adapter_dir) / "adapter_config.json"
    config = json.loads(path.read_text())
    config["base_model_name_or_path"] = hub_model_id(config.get("base_model_name_or_path"))
    path.write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")


def write_adapter_model_card(
    adapter_dir: str | os.PathLike,
    base_model: str | None,
    repo_id: str | None = None,
    license: str | None = None,
    training: dict | None = None,
):
    """Writes the adapter's `README.md` (see [`adapter_model_card`]); `repo_id` defaults to the folder's name."""
    adapter_dir = Path(adapter_dir)
    card = adapter_model_card(repo_id or adapter_dir.name, base_model, license=license, training=training)
    card.save(adapter_dir / "README.md")


def push_adapter_to_hub(
    model: PeftModel,
    repo_id: str,
    commit_message: str | None = None,
    private: bool | None = None,
    token: str | None = None,
    create_pr: bool = False,
    license: str | None = None,
):
    """
    Uploads a LoRA adapter to the Hub: the `save_pretrained` files plus a model card ([`adapter_model_card`],
    declaring `license` when given). Creates the repo when it does not exist and prints its URL.

    Returns:
        The `CommitInfo` of the upload.
    """
    base_model = model.peft_config[model.active_adapter].base_model_name_or_path
    with tempfile.TemporaryDirectory() as temporary:
        folder = Path(temporary) / "adapter"
        model.save_pretrained(folder)
        remove_local_base_model(folder)
        return upload_folder_with_card(
            folder, repo_id, lambda repo: adapter_model_card(repo, base_model, license=license),
            what="the LoRA adapter", commit_message=commit_message or "Upload DreamLLM LoRA adapter", private=private,
            token=token, create_pr=create_pr,
        )  # fmt: skip


__all__ = [
    "adapter_model_card",
    "apply_lora",
    "dreamllm_lora_config",
    "push_adapter_to_hub",
    "remove_local_base_model",
    "write_adapter_model_card",
]
