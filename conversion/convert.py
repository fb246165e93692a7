"""Converting an original DreamLLM release into the one-folder layout every entry point loads.

The conversion never builds the model in memory. It checks every tensor's name and shape against a model built on
the meta device and lays out the output shards from those names, dtypes and shapes; then it opens one input file at
a time and copies each tensor in chunks, cast on the way, to its place in its shard. It never holds a whole tensor,
file or shard: from safetensors it needs a few chunks of memory (`weights.CHUNK_BYTES`), from a pickle about the
size of that file (its memory map), whatever the dtype and the shard size.
"""

import logging
import os
from dataclasses import dataclass
from pathlib import Path

import torch
from diffusers import AutoencoderKL, UNet2DConditionModel
from transformers import GenerationConfig
from transformers.tokenization_utils_tokenizers import TokenizersBackend
from transformers.utils.hub import convert_file_size_to_int

from dreamllm.file_utils import atomic_directory, remove_local_origins
from dreamllm.hub_files import write_loader_files
from dreamllm.modeling_dreamllm import DreamLLMConfig, DreamLLMForCausalLM
from dreamllm.modeling_dreamllm.modeling_dreamllm import apply_dreamllm_generation_defaults
from dreamllm.pipelines import DreamLLMPipeline
from dreamllm.processing import DreamLLMProcessor
from dreamllm.processing.tokenization_dreamllm import convert_original_tokenizer

from .hub import card_license, push_folder_to_hub
from .original import OriginalCheckpoint, Rename, WeightsSource
from .upstream import load_diffusion_parts, load_vision_parts, resolve_upstream_folder
from .weights import LazyTensors, ShardedSafetensorsWriter, StoredTensor, open_weights

logger = logging.getLogger(__name__)

DTYPE_CHOICES = {"auto": None, "float32": torch.float32, "bfloat16": torch.bfloat16}
# Component -> (subfolder, weights file stem) in the converted folder.
WEIGHTS_LAYOUT = {
    "model": ("", "model"),
    "unet": ("unet", "diffusion_pytorch_model"),
    "vae": ("vae", "diffusion_pytorch_model"),
}
MAX_PROBLEMS_SHOWN = 10


@dataclass(frozen=True)
class TensorMove:
    """One tensor to copy: its name in the input file, the rule that renames it, its stored dtype, and its shape in
    the converted folder (which may drop a leading dimension of size 1: the bytes are the same)."""

    source_key: str
    rename: Rename
    stored_dtype: torch.dtype
    target_shape: tuple[int, ...]

    @property
    def target_key(self) -> str:
        return self.rename.target_key(self.source_key)

    @property
    def float_dtype(self) -> torch.dtype | None:
        """The stored dtype if it is a floating-point one, else `None`."""
        return self.stored_dtype if self.stored_dtype.is_floating_point else None

    def converted(self, dtype: torch.dtype) -> StoredTensor:
        """The tensor as the converted folder stores it: renamed, floats in `dtype`, other dtypes kept."""
        return StoredTensor(self.target_key, dtype if self.float_dtype else self.stored_dtype, self.target_shape)


def convert_original_checkpoint(
    input_dir: str | os.PathLike,
    output_dir: str | os.PathLike,
    *,
    dtype: str = "auto",
    vision_config: str | os.PathLike | None = None,
    diffusion_config: str | os.PathLike | None = None,
    force: bool = False,
    max_shard_size: int | str = "5GB",
    push_to_hub: str | None = None,
    license: str | None = None,
) -> Path:
    """
    Converts an original DreamLLM release folder into one folder that `DreamLLMPipeline.from_pretrained`, the
    transformers Auto classes and both transformers pipeline tasks load.

    Args:
        input_dir: The original checkpoint: `config.json`, the language model (`model.safetensors`, sharded
            safetensors with an index, or `pytorch_model.bin`), `<plugin>.bin` for each plugin, tokenizer files.
        output_dir: Where the converted folder appears, atomically, once it is complete.
        dtype: `"auto"` keeps the language model's stored dtype; `"float32"` or `"bfloat16"` cast. Every component
            (vision tower, UNet, VAE included) gets that dtype, as in the original loader.
        vision_config: A CLIP folder (`config.json`, `preprocessor_config.json`) to use instead of the one the
            checkpoint names.
        diffusion_config: A Stable Diffusion folder (`unet/`, `vae/`, `scheduler/` configs) to use instead of the one
            the checkpoint names.
        force: Replace an existing converted model at `output_dir`.
        max_shard_size: Largest weights file written (bytes or a string such as `"5GB"`); memory does not depend
            on it.
        push_to_hub: A Hub repo id to upload the converted folder to, with a model card.
        license: The license the card declares (an SPDX id or a Hub license name, e.g. `"llama2"`); by default the
            one `input_dir` declares (`license` in its `README.md` front matter, else in its `config.json`).

    Returns:
        The converted folder.

    Raises:
        `FileNotFoundError`: a file is missing (named).
        `FileExistsError`: `output_dir` exists and `force` is false.
        `ValueError`: the config is inconsistent, a pickle is unsafe, or tensors are missing, unexpected or of the
            wrong shape (each named).
    """
    if dtype not in DTYPE_CHOICES:
        raise ValueError(f"dtype must be one of {', '.join(DTYPE_CHOICES)}, got {dtype!r}")
    checkpoint = OriginalCheckpoint(input_dir)
    pipeline = empty_converted_pipeline(checkpoint, vision_config, diffusion_config)
    main_sources = checkpoint.main_sources()
    sources = [*checkpoint.plugin_sources(), *main_sources]
    plan = plan_conversion(sources, expected_shapes(pipeline))
    stored_dtypes = stored_language_model_dtypes(main_sources, plan)
    target_dtype = DTYPE_CHOICES[dtype] or single_stored_dtype(stored_dtypes)
    generation_config = original_generation_config(checkpoint) or pipeline.model.generation_config
    apply_dreamllm_generation_defaults(generation_config, pipeline.model.config)
    with atomic_directory(output_dir, overwrite=force) as staging:
        write_configs(pipeline, generation_config, target_dtype, staging)
        write_weights(sources, plan, target_dtype, staging, convert_file_size_to_int(max_shard_size))
    logger.info("Converted %s to %s (%s)", checkpoint.folder, output_dir, target_dtype)
    if push_to_hub:
        message = f"Convert the original DreamLLM checkpoint ({target_dtype})"
        conversion = {"source_dtype": "+".join(sorted(dtype_name(stored) for stored in stored_dtypes)),
                      "dtype": dtype_name(target_dtype)}
        push_folder_to_hub(output_dir, push_to_hub, commit_message=message,
                           license=card_license(license, checkpoint.folder), conversion=conversion)
    return Path(output_dir)


def empty_converted_pipeline(
    checkpoint: OriginalCheckpoint,
    vision_config: str | os.PathLike | None,
    diffusion_config: str | os.PathLike | None,
) -> DreamLLMPipeline:
    """
    The converted pipeline with its weights on the meta device: the config, processor and scheduler are final, and
    its modules give the name and shape of every tensor the converted folder must hold.
    """
    checkpoint.check_supported_plugins()
    vision = load_vision_parts(vision_config or upstream_folder(checkpoint, "vision", "clip_vision_model_name_or_path"))
    diffusion = load_diffusion_parts(
        diffusion_config or upstream_folder(checkpoint, "diffusion", "diffusion_name_or_path")
    )
    config = build_config(checkpoint, vision.config.to_dict(), diffusion.unet_config)
    tokenizer = convert_original_tokenizer(checkpoint.folder)
    check_tokenizer(checkpoint, tokenizer, config)
    processor = DreamLLMProcessor(
        image_processor=vision.image_processor,
        tokenizer=tokenizer,
        num_image_tokens=config.num_image_tokens,
        num_dream_queries=config.num_dream_queries,
    )
    with torch.device("meta"):
        model = DreamLLMForCausalLM(config)
        unet = UNet2DConditionModel.from_config(diffusion.unet_config)
        vae = AutoencoderKL.from_config(diffusion.vae_config)
    return DreamLLMPipeline(model=model, processor=processor, unet=unet, vae=vae, scheduler=diffusion.scheduler)


def upstream_folder(checkpoint: OriginalCheckpoint, role: str, setting: str) -> Path:
    """The folder of the upstream configs that a plugin setting names (see `resolve_upstream_folder`)."""
    override_flag = "--vision-config" if role == "vision" else "--diffusion-config"
    return resolve_upstream_folder(
        checkpoint.plugin_setting(role, setting),
        checkpoint.folder,
        checkpoint.setting_name(role, setting),
        override_flag,
    )


def build_config(checkpoint: OriginalCheckpoint, vision_config: dict, unet_config: dict) -> DreamLLMConfig:
    """Our config of the checkpoint: its Llama fields, the upstream vision config, plugin settings and token ids."""
    return DreamLLMConfig(
        text_config=checkpoint.text_config(),
        vision_config=vision_config,
        num_dream_queries=checkpoint.plugin_setting("dream", "num_dream_queries", 64),
        vision_feature_layer=checkpoint.plugin_setting("vision", "select_layer", -2),
        condition_dim=unet_config["cross_attention_dim"],
        loss_weight_lm=checkpoint.config.get("loss_weight_lm", 1.0),
        loss_weight_diffusion=checkpoint.config.get("loss_weight_vm", 10.0),
        tie_word_embeddings=checkpoint.config.get("tie_word_embeddings", False),
        **checkpoint.special_token_ids(),
    )


def check_tokenizer(checkpoint: OriginalCheckpoint, tokenizer: TokenizersBackend, config: DreamLLMConfig):
    """Raises a `ValueError` when the tokenizer files and `special_tokens2ids_dict` disagree, or the vocabulary is
    larger than the model's embedding matrix."""
    for token, token_id in checkpoint.token_ids_by_token().items():
        tokenizer_id = tokenizer.convert_tokens_to_ids(token)
        if tokenizer_id != token_id:
            raise ValueError(
                f"{checkpoint.config_file}: special_tokens2ids_dict gives {token!r} the id {token_id}, but the "
                f"tokenizer files give it {tokenizer_id}"
            )
    if len(tokenizer) > config.text_config.vocab_size:
        raise ValueError(
            f"The tokenizer in {checkpoint.folder} has {len(tokenizer)} tokens, more than the model's vocab_size "
            f"{config.text_config.vocab_size}"
        )


def expected_shapes(pipeline: DreamLLMPipeline) -> dict[str, dict[str, tuple[int, ...]]]:
    """Component -> tensor name -> shape, for every tensor the converted folder must hold."""
    return {
        component: {key: tuple(tensor.shape) for key, tensor in getattr(pipeline, component).state_dict().items()}
        for component in WEIGHTS_LAYOUT
    }


def plan_conversion(
    sources: list[WeightsSource], expected: dict[str, dict[str, tuple[int, ...]]]
) -> dict[Path, list[TensorMove]]:
    """
    Maps every tensor of every input file to its converted name, reading only names, dtypes and shapes.

    Raises:
        `ValueError`: listing the tensors that are unexpected, duplicated, of the wrong shape, or missing.
    """
    plan, problems, found = {}, [], {}
    for source in sources:
        with open_weights(source.path) as tensors:
            plan[source.path] = plan_source(source, tensors, expected, problems)
        for move in plan[source.path]:
            target = (move.rename.component, move.target_key)
            if target in found:
                problems.append(f"{source.path.name}: {move.source_key!r} is also in {found[target].name}")
            found[target] = source.path
    problems += [
        f"{missing_source(sources, component, key)} (needed for {key!r})"
        for component, shapes in expected.items()
        for key in shapes
        if (component, key) not in found
    ]
    if problems:
        shown = problems[:MAX_PROBLEMS_SHOWN]
        more = f"\n  ... and {len(problems) - len(shown)} more" if len(problems) > len(shown) else ""
        raise ValueError("The checkpoint does not match its config:\n  " + "\n  ".join(shown) + more)
    return plan


def plan_source(source: WeightsSource, tensors: LazyTensors, expected: dict, problems: list[str]) -> list[TensorMove]:
    """The moves of one input file; its unexpected tensors and shape mismatches are appended to `problems`."""
    moves, ignored = [], 0
    for key in tensors.keys():
        if source.is_ignored(key):
            ignored += 1
            continue
        rename = source.rename_for(key)
        target_shapes = expected[rename.component] if rename else {}
        target_key = rename.target_key(key) if rename else None
        if target_key not in target_shapes:
            problems.append(f"{source.path.name}: unexpected tensor {key!r}")
            continue
        shape, target_shape = tensors.shape(key), target_shapes[target_key]
        squeeze = rename.batch_dim and len(shape) == len(target_shape) + 1 and shape[0] == 1
        if shape[squeeze:] != target_shape:
            problems.append(
                f"{source.path.name}: {key!r} has shape {list(shape)}, the config needs {list(target_shape)}"
            )
            continue
        moves.append(TensorMove(key, rename, tensors.dtype(key), target_shape))
    if ignored:
        logger.info("%s: dropped %d tensors the original loader ignores", source.path.name, ignored)
    return moves


def missing_source(sources: list[WeightsSource], component: str, target_key: str) -> str:
    """Where a missing tensor should have been: `<file>: missing <source name>`."""
    for source in sources:
        for rename in source.renames:
            if rename.component == component and target_key.startswith(rename.target_prefix):
                return f"{source.path.name}: missing {rename.source_key(target_key)!r}"
    return f"missing {component} tensor {target_key!r}"


def stored_language_model_dtypes(
    main_sources: list[WeightsSource], plan: dict[Path, list[TensorMove]]
) -> set[torch.dtype]:
    """The floating-point dtypes the language model is stored in."""
    return {move.float_dtype for source in main_sources for move in plan[source.path] if move.float_dtype}


def single_stored_dtype(dtypes: set[torch.dtype]) -> torch.dtype:
    """The one stored floating-point dtype (`dtype="auto"` keeps it); an error if the weights mix several."""
    if len(dtypes) != 1:
        raise ValueError(f"The language-model weights are stored in {sorted(map(str, dtypes))}; pass dtype explicitly")
    return next(iter(dtypes))


def dtype_name(dtype: torch.dtype) -> str:
    """`torch.bfloat16` as `"bfloat16"`."""
    return str(dtype).removeprefix("torch.")


def original_generation_config(checkpoint: OriginalCheckpoint) -> GenerationConfig | None:
    """The checkpoint's own `generation_config.json`, if it has one."""
    if not (checkpoint.folder / "generation_config.json").is_file():
        return None
    return GenerationConfig.from_pretrained(checkpoint.folder)


def write_configs(pipeline: DreamLLMPipeline, generation_config: GenerationConfig, dtype: torch.dtype, folder: Path):
    """Writes every file of the one-folder layout except the weights (see `DreamLLMPipeline.save_pretrained`)."""
    model_config = pipeline.model.config
    model_config.architectures = [type(pipeline.model).__name__]
    model_config.dtype = dtype
    model_config.save_pretrained(folder)
    generation_config.save_pretrained(folder)
    pipeline.processor.save_pretrained(folder)
    pipeline.unet.save_config(folder / "unet")
    pipeline.vae.save_config(folder / "vae")
    pipeline.scheduler.save_pretrained(folder / "scheduler")
    pipeline.save_config(folder)
    remove_local_origins(folder)
    write_loader_files(folder)


def write_weights(
    sources: list[WeightsSource],
    plan: dict[Path, list[TensorMove]],
    dtype: torch.dtype,
    folder: Path,
    max_shard_bytes: int,
):
    """
    Copies the planned tensors into the model, UNet and VAE safetensors shards, chunk by chunk, casting
    floating-point tensors to `dtype`; one input file is open at a time.
    """
    moves = [move for source in sources for move in plan[source.path]]
    writers = {
        component: ShardedSafetensorsWriter(
            folder / subfolder,
            stem,
            [move.converted(dtype) for move in moves if move.rename.component == component],
            max_shard_bytes,
        )
        for component, (subfolder, stem) in WEIGHTS_LAYOUT.items()
    }
    for source in sources:
        with open_weights(source.path) as tensors:
            for move in plan[source.path]:
                target = move.converted(dtype)
                chunks = (chunk.to(target.dtype) for chunk in tensors.chunks(move.source_key))
                writers[move.rename.component].write(target.key, chunks)
    for writer in writers.values():
        writer.close()
