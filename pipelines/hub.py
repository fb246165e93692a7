"""The model card written next to a pipeline uploaded with `DreamLLMPipeline.push_to_hub`."""

from huggingface_hub import ModelCard, ModelCardData

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

The same folder loads with transformers once `dreamllm` is imported:

```python
import dreamllm
from transformers import pipeline

answer = pipeline("image-text-to-text", model="{repo_id}")
documents = pipeline("interleaved-generation", model="{repo_id}")
```

From the command line: `dreamllm generate "Write a short illustrated story about a fox." --model {repo_id}`.
'''


def pipeline_model_card(repo_id: str) -> ModelCard:
    """The model card of an uploaded DreamLLMPipeline: metadata (library, pipeline tag, tags) and a usage snippet."""
    metadata = ModelCardData(library_name="diffusers", pipeline_tag=PIPELINE_TAG, tags=TAGS)
    return ModelCard(f"---\n{metadata.to_yaml()}\n---\n{USAGE.format(repo_id=repo_id)}")


__all__ = ["pipeline_model_card"]
