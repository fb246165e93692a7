"""Uploading what `dreamllm train` saved (a pipeline folder or a LoRA adapter) to the Hub, with its model card."""

import os
from pathlib import Path

from huggingface_hub import CommitInfo, ModelCard

from dreamllm.pipelines.hub import pipeline_model_card, upload_folder_with_card

from .lora import adapter_model_card


def push_trained_to_hub(
    output_dir: str | os.PathLike,
    repo_id: str,
    *,
    license: str | None = None,
    private: bool | None = None,
    token: str | None = None,
) -> CommitInfo:
    """
    Uploads the model saved by `dreamllm train` in `output_dir` (a pipeline folder, or an adapter folder when it holds
    `adapter_config.json`) to the model repo `repo_id`, without the Trainer's `checkpoint-*` folders and hidden
    (staging) entries. The card is the saved one (base model, training settings) made out for `repo_id` and declaring
    `license`. Prints the repo URL.
    """
    folder = Path(output_dir)
    saved = ModelCard.load(folder / "README.md").data
    training = (saved.to_dict().get("dreamllm") or {}).get("training")
    is_adapter = (folder / "adapter_config.json").is_file()
    what = "the trained LoRA adapter" if is_adapter else "the trained DreamLLMPipeline"
    make_card = adapter_model_card if is_adapter else pipeline_model_card

    def card(repo: str) -> ModelCard:
        return make_card(repo, license=license, base_model=saved.base_model, training=training)

    return upload_folder_with_card(
        folder, repo_id, card, what=what, commit_message=f"Upload {what.removeprefix('the ')}", private=private,
        token=token, exclude=["checkpoint-*", ".*"],
    )  # fmt: skip


__all__ = ["push_trained_to_hub"]
