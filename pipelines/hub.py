"""Model cards of DreamLLM folders (converted, trained, built from parts) and their upload to the Hub with the card.

A card's metadata holds, besides the Hub's keys, what produced the weights under a `dreamllm:` key: `conversion` (the
dtype cast) for converted checkpoints, `training` (the run's settings) for trained ones, `components` (the new parts'
settings) for an untrained model built from parts; the card's text says the same in words, and a converted checkpoint's card quotes the parity and speed figures of `dreamllm.pipelines.figures`.
"""

import fnmatch
import os
from collections.abc import Callable, Iterable
from pathlib import Path

from huggingface_hub import CommitInfo, CommitOperationAdd, HfApi, ModelCard, ModelCardData

from dreamllm.hub_files import hub_model_id

from .figures import PARITY, PARITY_SETUP, SPEED, SPEED_SETUP, table_row

PIPELINE_TAG = "image-text-to-text"
TAGS = ["dreamllm", "text-to-image", "image-text-to-text", "interleaved-generation", "multimodal"]

USAGE = '''
# DreamLLM

[DreamLLM](https://arxiv.org/abs/2309.11499) (ICLR 2024) is one language model that reads and writes images inside
free-form documents. This repository holds the whole model in one folder: the language model and processor at the top,
the Stable Diffusion UNet, VAE and scheduler in `unet/`, `vae/` and `scheduler/`.

## Usage

Install the `dreamllm` package from its source (it is not on PyPI; run this in a checkout):

```bash
pip install .
```

Without the package, or without `trust_remote_code=True`, the generic entry points below fail: the repo's
`dreamllm_loader.py` only imports the installed package (it holds no model code).

```python
import torch
from dreamllm import DreamLLMPipeline

pipe = DreamLLMPipeline.from_pretrained("{repo_id}")

# A document of text and images, written freely by the model
output = pipe("Write a short illustrated story about a fox.", generator=torch.Generator().manual_seed(0))
for part in output.documents[0]:
    print(part)  # text segments (str) and images (PIL.Image)

# Text to image, as in the paper
image = pipe.text_to_image("A photo of a cat", generator=torch.Generator().manual_seed(0)).images[0]
```

The generic entry points load it too, with `trust_remote_code=True` (no `import dreamllm` needed):

```python
from diffusers import DiffusionPipeline
from transformers import AutoModelForImageTextToText, AutoProcessor

pipe = DiffusionPipeline.from_pretrained("{repo_id}", trust_remote_code=True)
model = AutoModelForImageTextToText.from_pretrained("{repo_id}", trust_remote_code=True)
processor = AutoProcessor.from_pretrained("{repo_id}", trust_remote_code=True)
```

The transformers task pipelines need `import dreamllm` (it registers the DreamLLM tasks):

```python
import dreamllm
from transformers import pipeline

answer = pipeline("image-text-to-text", model="{repo_id}")
documents = pipeline("interleaved-generation", model="{repo_id}")
```

From the command line: `dreamllm generate "Write a short illustrated story about a fox." --model {repo_id}`.
'''


def pipeline_model_card(
    repo_id: str,
    license: str | None = None,
    base_model: str | None = None,
    conversion: dict | None = None,
    training: dict | None = None,
    components: dict | None = None,
) -> ModelCard:
    """
    The model card of a DreamLLMPipeline folder: metadata (library, the pipeline tag of the task that loads, tags,
    `license` and `base_model` when known; a local path is never written as `base_model`) and usage snippets.

    Args:
        conversion (`dict`, *optional*): For a converted original checkpoint, `{"source_dtype": ..., "dtype": ...}`:
            the card states the cast and quotes the parity and speed figures (see `conversion_section`).
        training (`dict`, *optional*): For a trained model, the run's settings (see `training_section`).
        components (`dict`, *optional*): For an untrained model built from parts, the settings of its new parts (see
            `components_section`): the card says it must be trained before use.
    """
    metadata = card_metadata("diffusers", TAGS, license, base_model, conversion=conversion, training=training,
                             components=components)
    text = (USAGE.format(repo_id=repo_id) + conversion_section(conversion) + training_section(training)
            + components_section(components))
    return ModelCard(f"---\n{metadata.to_yaml()}\n---\n{text}")


def card_metadata(library_name: str, tags: list[str], license: str | None, base_model: str | None,
                  **dreamllm: dict | None) -> ModelCardData:
    """A card's metadata: the Hub's keys, and the `dreamllm:` entries that are given (`conversion`, `training`)."""
    extra = {name: value for name, value in dreamllm.items() if value}
    return ModelCardData(library_name=library_name, pipeline_tag=PIPELINE_TAG, tags=tags, license=license,
                         base_model=hub_model_id(base_model), **({"dreamllm": extra} if extra else {}))


def conversion_section(conversion: dict | None) -> str:
    """The card text of a converted checkpoint: the dtype cast, then the measured parity and speed figures."""
    if not conversion:
        return ""
    source, target = conversion["source_dtype"], conversion["dtype"]
    cast = f"cast from {source} to {target}" if source != target else f"kept in {target}, the dtype they were stored in"
    parity = "\n".join(table_row(check, figure) for check, figure in PARITY)
    speed = "\n".join(f"- {what}: {figure}" for what, figure in SPEED)
    return f"""
## Conversion

Converted from the original DreamLLM release with `dreamllm convert`; the weights were {cast}.

Parity with the original implementation, measured on {PARITY_SETUP} (a checkpoint cast to a lower
precision also differs by that precision's rounding):

| check | max abs difference |
|---|---|
{parity}

Speed and memory, measured by {SPEED_SETUP} against the closest Hugging Face class:

{speed}
"""


def training_section(training: dict | None) -> str:
    """The card text of a trained model: one table row per setting of the run."""
    if not training:
        return ""
    rows = "\n".join(table_row(name.replace("_", " "), format_setting(value)) for name, value in training.items())
    return f"""
## Training

Trained with `dreamllm train` (also under `dreamllm.training` in this card's metadata):

| setting | value |
|---|---|
{rows}
"""


def components_section(components: dict | None) -> str:
    """The card text of an untrained model built from parts: what is new in it, and that it must be trained first."""
    if not components:
        return ""
    rows = "\n".join(table_row(name.replace("_", " "), format_setting(value)) for name, value in components.items())
    return f"""
## Untrained

Built with `dreamllm convert --from-components` from a Llama/Vicuna language model, a CLIP vision tower and a Stable
Diffusion 2.x. The vision projector, the dream queries, the dream projector and the embeddings of the DreamLLM tokens
are freshly initialised: until it is trained (`dreamllm train`), this model neither understands images nor draws
them, and its documents are those of the language model it was built from.

| new part | setting |
|---|---|
{rows}
"""


def format_setting(value) -> str:
    """A setting as a table cell: lists joined with commas."""
    return ", ".join(map(str, value)) if isinstance(value, (list, tuple)) else str(value)


def upload_folder_with_card(
    folder: str | os.PathLike,
    repo_id: str,
    card: Callable[[str], ModelCard],
    *,
    what: str,
    commit_message: str,
    private: bool | None = None,
    token: str | None = None,
    create_pr: bool = False,
    exclude: Iterable[str] = (),
) -> CommitInfo:
    """
    Uploads every file of `folder` to the model repo `repo_id` in one commit, creating the repo if needed, with
    `card(repo_id)` as its `README.md` (the folder's own `README.md` is replaced). Files are streamed from disk, so
    nothing is loaded into memory; top-level entries matching an `exclude` pattern (e.g. `"checkpoint-*"`) stay out.
    Prints "Uploaded {what} to {url}" and returns the `CommitInfo`.
    """
    api = HfApi(token=token)
    repo_url = api.create_repo(repo_id, private=private, exist_ok=True)
    operations = [*folder_operations(Path(folder), exclude),
                  CommitOperationAdd(path_in_repo="README.md", path_or_fileobj=str(card(repo_url.repo_id)).encode())]
    commit = api.create_commit(repo_id=repo_url.repo_id, operations=operations, commit_message=commit_message,
                               create_pr=create_pr)
    print(f"Uploaded {what} to {repo_url}")
    return commit


def folder_operations(folder: Path, exclude: Iterable[str] = ()) -> list[CommitOperationAdd]:
    """One upload per file of `folder` at its relative path, but for `README.md` and `exclude`d top-level entries."""
    exclude = ["README.md", *exclude]
    operations = []
    for path in sorted(folder.rglob("*")):
        relative = path.relative_to(folder).as_posix()
        if path.is_file() and not any(fnmatch.fnmatch(relative.split("/")[0], pattern) for pattern in exclude):
            operations.append(CommitOperationAdd(path_in_repo=relative, path_or_fileobj=str(path)))
    return operations


__all__ = ["pipeline_model_card", "upload_folder_with_card"]
