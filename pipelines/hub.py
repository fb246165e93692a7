"""The model card written next to a pipeline uploaded with `DreamLLMPipeline.push_to_hub`."""

from huggingface_hub import ModelCard, ModelCardData

from dreamllm.hub_files import hub_model_id

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


def pipeline_model_card(repo_id: str, license: str | None = None, base_model: str | None = None) -> ModelCard:
    """
    The model card of an uploaded DreamLLMPipeline: metadata (library, the pipeline tag of the task that loads,
    tags, `license` and `base_model` when known; a local path is never written as `base_model`) and usage snippets.
    """
    metadata = ModelCardData(library_name="diffusers", pipeline_tag=PIPELINE_TAG, tags=TAGS, license=license,
                             base_model=hub_model_id(base_model))
    return ModelCard(f"---\n{metadata.to_yaml()}\n---\n{USAGE.format(repo_id=repo_id)}")


__all__ = ["pipeline_model_card"]
