"""The transformers task "interleaved-generation": `transformers.pipeline("interleaved-generation", model=repo)`.

Importing this module registers the task. The transformers pipeline loads the language model and processor the
usual way, takes the UNet, VAE and scheduler from the same saved folder, and hands the work to [`DreamLLMPipeline`],
so both return the same documents.
"""

from transformers import AutoModelForCausalLM, Pipeline
from transformers.pipelines import PIPELINE_REGISTRY

from .pipeline_dreamllm import DreamLLMPipeline, is_conversation

TASK = "interleaved-generation"


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
            **kwargs: Arguments of [`DreamLLMPipeline.__call__`] (`generator`, `max_new_tokens`, `do_sample`, ...).

        Returns:
            A dict (`document`, `text`, `images`) per prompt: one dict, or a list for a list of prompts.
        """
        if isinstance(prompt, str) or is_conversation(prompt):
            return super().__call__({"prompt": prompt, "images": images}, **kwargs)
        images = [None] * len(prompt) if images is None else images
        return super().__call__([{"prompt": p, "images": i} for p, i in zip(prompt, images, strict=True)], **kwargs)

    def preprocess(self, inputs: dict, use_chat_template: bool = True) -> dict:
        return {**inputs, "use_chat_template": use_chat_template}

    def _forward(self, model_inputs: dict, **forward_parameters) -> dict:
        documents, text, images = self.dreamllm_pipeline(**model_inputs, **forward_parameters, return_dict=False)
        return {"document": documents[0], "text": text[0], "images": images[0]}

    def postprocess(self, model_outputs: dict) -> dict:
        return model_outputs


PIPELINE_REGISTRY.register_pipeline(
    TASK, pipeline_class=InterleavedGenerationPipeline, pt_model=AutoModelForCausalLM, type="multimodal"
)

__all__ = ["InterleavedGenerationPipeline"]
