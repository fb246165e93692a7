"""Building an untrained DreamLLM from parts: a Llama/Vicuna, a CLIP vision tower and a Stable Diffusion 2.x.

This is the starting point for training one's own DreamLLM: the language model gets the eight DreamLLM tokens (its
embeddings and LM head grow by as many rows), the vision tower and the diffusion components are the given ones, and
the vision projector, the dream queries and the dream projector are freshly initialized.
"""

import os
from pathlib import Path

import torch
from diffusers import AutoencoderKL, UNet2DConditionModel
from transformers import AutoModelForCausalLM, AutoTokenizer, CLIPVisionModel
from transformers.tokenization_utils_tokenizers import TokenizersBackend

from dreamllm.file_utils import check_replaceable
from dreamllm.modeling_dreamllm import DreamLLMConfig, DreamLLMForCausalLM
from dreamllm.modeling_dreamllm.modeling_dreamllm import apply_dreamllm_generation_defaults
from dreamllm.pipelines import DreamLLMPipeline
from dreamllm.processing import DreamLLMProcessor
from dreamllm.processing.tokenization_dreamllm import add_dreamllm_special_tokens

from .convert import DTYPE_CHOICES, dtype_name
from .hub import card_license, push_folder_to_hub
from .original import TOKEN_ID_FIELDS
from .upstream import load_diffusion_parts, load_vision_parts

# Keys of a saved Llama config that describe the file rather than the architecture.
NON_ARCHITECTURE_KEYS = ("architectures", "dtype", "_name_or_path", "transformers_version")


def build_from_components(
    llm_dir: str | os.PathLike,
    vision_dir: str | os.PathLike,
    diffusion_dir: str | os.PathLike,
    output_dir: str | os.PathLike,
    *,
    num_dream_queries: int = 64,
    dtype: str = "auto",
    seed: int = 0,
    force: bool = False,
    max_shard_size: int | str = "5GB",
    push_to_hub: str | None = None,
    license: str | None = None,
) -> Path:
    """
    Builds an untrained DreamLLM from local components and saves it in the one-folder layout.

    Args:
        llm_dir: A Llama/Vicuna checkpoint with its tokenizer (transformers format).
        vision_dir: A CLIP checkpoint (`CLIPVisionModel` or `CLIPModel`) with its `preprocessor_config.json`.
        diffusion_dir: A Stable Diffusion 2.x folder with `unet/`, `vae/` and `scheduler/`.
        output_dir: Where the model appears, atomically.
        num_dream_queries: Number of learned dream queries.
        dtype: `"auto"` (the language model's stored dtype), `"float32"` or `"bfloat16"`, for every component.
        seed: Seeds the new embedding rows, queries and projectors (the global random state is left as it was).
        force: Replace an existing model at `output_dir`.
        max_shard_size: Largest weights file written (bytes or a string such as `"5GB"`).
        push_to_hub: A Hub repo id to upload the result to, with a model card.
        license: The license the card declares (an SPDX id or a Hub license name); by default the one `llm_dir`
            declares (`license` in its `README.md` front matter, else in its `config.json`).

    Returns:
        The output folder.
    """
    if dtype not in DTYPE_CHOICES:
        raise ValueError(f"dtype must be one of {', '.join(DTYPE_CHOICES)}, got {dtype!r}")
    check_replaceable(Path(output_dir).absolute(), force)
    vision = load_vision_parts(vision_dir)
    diffusion = load_diffusion_parts(diffusion_dir)
    tokenizer = add_dreamllm_special_tokens(AutoTokenizer.from_pretrained(llm_dir))
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = assemble_model(
            llm_dir, vision_dir, tokenizer, num_dream_queries, diffusion.unet_config["cross_attention_dim"], dtype
        )
    processor = DreamLLMProcessor(
        image_processor=vision.image_processor,
        tokenizer=tokenizer,
        num_image_tokens=model.config.num_image_tokens,
        num_dream_queries=num_dream_queries,
    )
    pipeline = DreamLLMPipeline(
        model=model,
        processor=processor,
        unet=UNet2DConditionModel.from_pretrained(diffusion_dir, subfolder="unet", torch_dtype=model.dtype).eval(),
        vae=AutoencoderKL.from_pretrained(diffusion_dir, subfolder="vae", torch_dtype=model.dtype).eval(),
        scheduler=diffusion.scheduler,
    )
    pipeline.save_pretrained(output_dir, max_shard_size=max_shard_size)
    if push_to_hub:
        push_folder_to_hub(output_dir, push_to_hub, commit_message="Upload an untrained DreamLLM built from components",
                           license=card_license(license, llm_dir), components={
                               "num_dream_queries": num_dream_queries, "seed": seed, "dtype": dtype_name(model.dtype)})
    return Path(output_dir)


def assemble_model(
    llm_dir: str | os.PathLike,
    vision_dir: str | os.PathLike,
    tokenizer: TokenizersBackend,
    num_dream_queries: int,
    condition_dim: int,
    dtype: str,
) -> DreamLLMForCausalLM:
    """
    A DreamLLM whose language model and vision tower are the loaded checkpoints (embeddings resized to the tokenizer)
    and whose projectors and dream queries are newly initialized; built on the meta device first, so no weights are
    created twice.
    """
    language_model = AutoModelForCausalLM.from_pretrained(llm_dir, dtype=DTYPE_CHOICES[dtype] or "auto")
    if language_model.config.model_type != "llama":
        raise ValueError(f"{llm_dir} holds a {language_model.config.model_type!r} model; DreamLLM builds on Llama")
    language_model.resize_token_embeddings(len(tokenizer))
    vision_tower = CLIPVisionModel.from_pretrained(vision_dir, dtype=language_model.dtype)
    text_config = {
        key: value for key, value in language_model.config.to_dict().items() if key not in NON_ARCHITECTURE_KEYS
    }
    config = DreamLLMConfig(
        text_config=text_config,
        vision_config=vision_tower.config.to_dict(),
        num_dream_queries=num_dream_queries,
        condition_dim=condition_dim,
        tie_word_embeddings=language_model.config.tie_word_embeddings,
        **{field: tokenizer.convert_tokens_to_ids(token) for field, token in TOKEN_ID_FIELDS.items()},
    )
    with torch.device("meta"):
        model = DreamLLMForCausalLM(config)
    model.model.language_model = language_model.model
    model.lm_head = language_model.lm_head
    model.model.vision_tower = vision_tower
    model.generation_config = language_model.generation_config
    apply_dreamllm_generation_defaults(model.generation_config, model.config)
    for new_module in (model.model.vision_projector, model.model.dream_queries, model.model.dream_projector):
        new_module.to_empty(device="cpu")
        model._init_weights(new_module)
    return model.to(language_model.dtype).eval()
