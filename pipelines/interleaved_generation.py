"""The transformers task "interleaved-generation": `transformers.pipeline("interleaved-generation", model=repo)`.

Importing this module registers the task. The transformers pipeline loads the language model and processor the
usual way, takes the UNet, VAE and scheduler from the same saved folder, and hands the work to [`DreamLLMPipeline`],
so both return the same documents.
"""

from dataclasses import dataclass

from transformers import AutoModelForCausalLM, Pipeline
from transformers.pipelines import PIPELINE_REGISTRY

from .pipeline_dreamllm import DreamLLMPipeline, document_images, is_conversation

TASK = "interleaved-generation"


@dataclass
class DocumentRequest:
    """One input of the task: a prompt and its images. (An object, so that transformers' batching keeps it whole.)"""

    prompt: str | list[dict]
    images: object = None


class InterleavedGenerationPipeline(Pipeline):
    """
    Writes documents of text and images with DreamLLM, as a transformers pipeline.

    The diffusion components come from the folder (or Hub repo) the model was loaded from, unless `unet`, `vae` or
    `scheduler` are passed to `transformers.pipeline(...)`.

    Example:

    ```python
    >>> import dreamllm
    >>> from transformers import pipeline
    >>> writer = pipeline("interleaved-generation", model="path/to/converted-dreamllm")
    >>> writer("Write a short illustrated story about a fox.", max_new_tokens=200)["document"]
    ```

    Each input gives a dict with `document` (text segments and images in reading order), `text` (with `<image>` for
    each image) and `images`. Call arguments are those of [`DreamLLMPipeline.__call__`].
    """

    _load_processor = True
    _load_tokenizer = False
    _load_image_processor = False
    _load_feature_extractor = False

    def __init__(self, *args, unet=None, vae=None, scheduler=None, **kwargs):
        super().__init__(*args, **kwargs)
        components = {"unet": unet, "vae": vae, "scheduler": scheduler}
        given = {name: component for name, component in components.items() if component is not None}
        self.dreamllm_pipeline = DreamLLMPipeline.from_pretrained(
            self.model.name_or_path, model=self.model, processor=self.processor, dtype=self.model.dtype, **given
        ).to(self.device)

    def _sanitize_parameters(self, **kwargs):
        preprocess_parameters = {}
        if "use_chat_template" in kwargs:
            preprocess_parameters["use_chat_template"] = kwargs.pop("use_chat_template")
        return preprocess_parameters, kwargs, {}

    def __call__(self, prompt, images=None, **kwargs):
        """
        Args:
            prompt: A string or a conversation (one document), or a list of either (one document each).
            images: The images of a single prompt, or for a list of prompts one entry per prompt.
            **kwargs: Arguments of [`DreamLLMPipeline.__call__`] (`generator`, `max_new_tokens`, `do_sample`, ...),
                and `batch_size`: how many prompts are written together in one [`DreamLLMPipeline`] call.

        Returns:
            A dict (`document`, `text`, `images`) per prompt: one dict, or a list for a list of prompts.
        """
        if isinstance(prompt, str) or is_conversation(prompt):
            return super().__call__(DocumentRequest(prompt, images), **kwargs)
        if not isinstance(prompt, (list, tuple)) or not prompt:
            raise ValueError("prompt must be a string, a conversation, or a non-empty list of either")
        images = [None] * len(prompt) if images is None else images
        if len(images) != len(prompt):
            raise ValueError(f"images must hold one entry per prompt ({len(prompt)}), got {len(images)}")
        return super().__call__([DocumentRequest(p, i) for p, i in zip(prompt, images)], **kwargs)

    def preprocess(self, request: DocumentRequest, use_chat_template: bool = True) -> dict:
        return {"request": request, "use_chat_template": use_chat_template}

    def _forward(self, model_inputs: dict, **forward_parameters) -> dict:
        """
        Writes the documents of one request, or of a batch of them (transformers' `batch_size`) in one call. A batch
        gives lists, one entry per request, which transformers splits back into one result per input.
        """
        requests, use_chat_template = model_inputs["request"], model_inputs["use_chat_template"]
        batched = isinstance(requests, list)
        if batched:
            use_chat_template = use_chat_template[0]
        else:
            requests = [requests]
        output = self.dreamllm_pipeline(
            [request.prompt for request in requests],
            images=[request.images for request in requests],
            use_chat_template=use_chat_template,
            **forward_parameters,
        )
        images = [document_images(document) for document in output.documents]
        if batched:
            return {"document": output.documents, "text": output.text, "images": images}
        return {"document": output.documents[0], "text": output.text[0], "images": images[0]}

    def postprocess(self, model_outputs: dict) -> dict:
        return model_outputs


PIPELINE_REGISTRY.register_pipeline(
    TASK, pipeline_class=InterleavedGenerationPipeline, pt_model=AutoModelForCausalLM, type="multimodal"
)

__all__ = ["InterleavedGenerationPipeline"]
