"""DreamLLM: a Llama language model that reads images through CLIP features and writes images through dream queries.

Input images sit in the token stream as `<im_start>` + N x `<im_patch>` + `<im_end>`; the N patch positions receive the
projected CLIP features. Images to generate sit as `<dream_start>` + Q x `<im_patch>` + `<dream_end>`; the Q patch
positions receive the learned dream queries, and the final-norm hidden states at those positions, projected to
`condition_dim`, condition a Stable Diffusion UNet (see `dreamllm.pipelines`).
"""

import inspect
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors import SafetensorError
from torch import nn
from transformers import AutoModel, GenerationMixin, LlamaModel, PreTrainedModel
from transformers import initialization as init
from transformers.cache_utils import Cache
from transformers.modeling_outputs import BaseModelOutputWithPast, BaseModelOutputWithPooling, ModelOutput
from transformers.modeling_utils import slice_logits_to_keep
from transformers.processing_utils import Unpack
from transformers.utils import TransformersKwargs, logging
from transformers.utils.deprecation import deprecate_kwarg
from transformers.utils.generic import can_return_tuple

from dreamllm.hub_files import NoSourceCopy

from .configuration_dreamllm import DreamLLMConfig
from .loading_checks import (
    CheckpointError,
    incomplete_checkpoint_error,
    shape_mismatch_error,
    unreadable_weights_error,
)

CACHE_ARGUMENT = "cache" if "cache" in inspect.signature(LlamaModel.forward).parameters else "past_key_values"
"""The name transformers gives the key/value cache in forward arguments and outputs: "past_key_values" up to 5.23,
"cache" from 5.24 on. DreamLLM accepts both and returns the installed version's."""

logger = logging.get_logger(__name__)


def warn_on_old_cache_argument(forward):
    """Where transformers calls the cache `cache`, `past_key_values` still works with the warning its models give."""
    if CACHE_ARGUMENT == "cache":
        return deprecate_kwarg("past_key_values", "5.40.0", new_name="cache")(forward)
    return forward


class ImageOutputsAlias:
    """`image_hidden_states`: the documented alias of `image_outputs.pooler_output`, the projected image features."""

    @property
    def image_hidden_states(self) -> torch.FloatTensor | None:
        return None if self.image_outputs is None else self.image_outputs.pooler_output


@dataclass
class DreamLLMModelOutputWithPast(ImageOutputsAlias, BaseModelOutputWithPast):
    """
    Outputs of [`DreamLLMModel`].

    Args:
        last_hidden_state (`torch.FloatTensor` of shape `(batch_size, sequence_length, hidden_size)`):
            Final-norm hidden states of the language model.
        past_key_values (`Cache`, *optional*):
            The key/value cache, returned when `use_cache=True`.
        hidden_states (`tuple(torch.FloatTensor)`, *optional*):
            Embeddings plus each layer's output, returned when `output_hidden_states=True`.
        attentions (`tuple(torch.FloatTensor)`, *optional*):
            Attention weights, returned when `output_attentions=True`.
        image_outputs (`BaseModelOutputWithPooling`, *optional*):
            The vision tower's output for the input images, with the projected features written into the image blocks
            (`(num_images, num_image_tokens, hidden_size)`) as `pooler_output`; also reachable as `image_hidden_states`.
        dream_conditions (`torch.FloatTensor` of shape `(num_dream_blocks, num_dream_queries, condition_dim)`, *optional*):
            UNet conditions of every dream block of the input, in row-major order.
    """

    image_outputs: BaseModelOutputWithPooling | None = None
    dream_conditions: torch.FloatTensor | None = None


@dataclass
class DreamLLMCausalLMOutputWithPast(ImageOutputsAlias, ModelOutput):
    """
    Outputs of [`DreamLLMForCausalLM`].

    Args:
        loss (`torch.FloatTensor` of shape `()`, *optional*):
            Next-token cross-entropy over the labels that are not -100 (0 when every label is ignored).
        logits (`torch.FloatTensor` of shape `(batch_size, sequence_length, vocab_size)`):
            Next-token scores.
        past_key_values / cache (`Cache`, *optional*):
            The key/value cache, returned when `use_cache=True` (named as the installed transformers names it; see
            `CACHE_ARGUMENT`).
        hidden_states (`tuple(torch.FloatTensor)`, *optional*):
            Embeddings plus each layer's output, returned when `output_hidden_states=True`.
        attentions (`tuple(torch.FloatTensor)`, *optional*):
            Attention weights, returned when `output_attentions=True`.
        image_outputs (`BaseModelOutputWithPooling`, *optional*):
            The vision tower's output for the input images, with the projected features as `pooler_output` (also
            reachable as `image_hidden_states`).
        dream_conditions (`torch.FloatTensor` of shape `(num_dream_blocks, num_dream_queries, condition_dim)`, *optional*):
            UNet conditions of every dream block of the input, in row-major order.
    """

    loss: torch.FloatTensor | None = None
    logits: torch.FloatTensor | None = None
    if CACHE_ARGUMENT == "cache":
        cache: Cache | None = None
    else:
        past_key_values: Cache | None = None
    hidden_states: tuple[torch.FloatTensor, ...] | None = None
    attentions: tuple[torch.FloatTensor, ...] | None = None
    image_outputs: BaseModelOutputWithPooling | None = None
    dream_conditions: torch.FloatTensor | None = None


@dataclass
class BlockLayout:
    """Where the image and dream blocks of a batch of token ids are.

    A block is an opener (`<im_start>` or `<dream_start>`) followed by a run of `<im_patch>` tokens. Patch tokens
    that do not directly follow an opener (inside the same call) belong to no block and keep their token embedding.
    """

    image_patch_mask: torch.BoolTensor
    dream_patch_mask: torch.BoolTensor
    index_in_block: torch.LongTensor
    num_image_blocks: int
    num_dream_blocks: int


class DreamQueries(nn.Module):
    """The learned dream queries, held in a module of their own so that PEFT's `modules_to_save` can train them."""

    def __init__(self, num_queries: int, hidden_size: int):
        super().__init__()
        self.weight = nn.Parameter(torch.empty(num_queries, hidden_size))

    def forward(self, index: torch.LongTensor) -> torch.Tensor:
        """Returns the queries at `index` (one per dream patch position)."""
        return self.weight[index]


class DreamLLMPreTrainedModel(NoSourceCopy, PreTrainedModel):
    config: DreamLLMConfig
    base_model_prefix = "model"
    input_modalities = ("image", "text")
    supports_gradient_checkpointing = True
    _no_split_modules = ["LlamaDecoderLayer", "CLIPEncoderLayer"]
    _skip_keys_device_placement = [CACHE_ARGUMENT]
    _supports_flash_attn = True
    _supports_sdpa = True
    _supports_flex_attn = True
    _supports_attention_backend = True
    _can_compile_fullgraph = True  # the one-token decode step syncs nothing with the device (benchmarks/bench_compile.py)

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path, *model_args, **kwargs):
        """
        `PreTrainedModel.from_pretrained`, with clear errors for damaged checkpoints: a weight file that cannot be read
        or a tensor of the wrong shape is named, and a checkpoint that lacks a DreamLLM tensor or holds one the model
        does not have is refused (transformers would log it and leave random weights). With
        `output_loading_info=True` the model loads as transformers loads it and the report is returned to inspect.

        Raises:
            `CheckpointError` (a `ValueError`): naming the file or tensors and what is wrong with them.
        """
        wants_loading_info = kwargs.pop("output_loading_info", False)
        folder = Path(pretrained_model_name_or_path) if pretrained_model_name_or_path is not None else None
        local_folder = folder if folder is not None and folder.is_dir() else None
        try:
            model, loading_info = super().from_pretrained(
                pretrained_model_name_or_path, *model_args, output_loading_info=True, **kwargs
            )
        except SafetensorError as error:
            if local_folder is None:
                raise
            raise unreadable_weights_error(local_folder, error) from error
        except RuntimeError as error:
            mismatch = local_folder is not None and cls.shape_mismatch_in(local_folder, kwargs.get("config"))
            if not mismatch:
                raise
            raise mismatch from error
        if wants_loading_info:
            return model, loading_info
        if pretrained_model_name_or_path is not None:
            incomplete = incomplete_checkpoint_error(
                str(pretrained_model_name_or_path), loading_info["missing_keys"], loading_info["unexpected_keys"]
            )
            if incomplete is not None:
                raise incomplete
        return model

    @classmethod
    def shape_mismatch_in(cls, folder: Path, config: DreamLLMConfig | None) -> CheckpointError | None:
        """The error naming a tensor of `folder` whose shape the model (as its config describes it) cannot take."""
        config = config if isinstance(config, DreamLLMConfig) else DreamLLMConfig.from_pretrained(folder)
        with torch.device("meta"):
            expected_shapes = {name: tuple(tensor.shape) for name, tensor in cls(config).state_dict().items()}
        return shape_mismatch_error(folder, expected_shapes)

    @classmethod
    def is_custom_code(cls) -> bool:
        """
        Only code loaded from the Hub counts as custom: DreamLLM initializes through `transformers.initialization`, as
        transformers' own models do, so missing weights of the vision tower get CLIP's own initialization (its
        attention and MLP blocks, which hold no parameters of their own, are not skipped).
        """
        return cls.is_remote_code()

    def _init_weights(self, module):
        super()._init_weights(module)
        if isinstance(module, DreamQueries):
            init.normal_(module.weight, mean=0.0, std=self.config.text_config.initializer_range)


class DreamLLMModel(DreamLLMPreTrainedModel):
    """The DreamLLM backbone: vision tower + vision projector, Llama, dream queries and dream projector."""

    _keys_to_ignore_on_load_unexpected = [r"^lm_head\."]  # the head of a DreamLLMForCausalLM checkpoint

    def __init__(self, config: DreamLLMConfig):
        super().__init__(config)
        text_hidden_size = config.text_config.hidden_size
        self.vision_tower = AutoModel.from_config(config.vision_config)
        self.vision_projector = nn.Linear(config.vision_config.hidden_size, text_hidden_size, bias=True)
        self.language_model = AutoModel.from_config(config.text_config)
        self.dream_queries = DreamQueries(config.num_dream_queries, text_hidden_size)
        self.dream_projector = nn.Linear(text_hidden_size, config.condition_dim, bias=False)
        self.post_init()

    @can_return_tuple
    def get_image_features(
        self,
        pixel_values: torch.FloatTensor,
        vision_feature_layer: int | None = None,
        **kwargs: Unpack[TransformersKwargs],
    ) -> BaseModelOutputWithPooling:
        """
        Encodes images into language-model inputs: the vision tower's hidden states at `vision_feature_layer`
        (`config.vision_feature_layer` by default; no post-layernorm), CLS token dropped, through the vision projector.

        Args:
            pixel_values (`torch.FloatTensor` of shape `(num_images, channels, height, width)`):
                Images prepared by the processor's image processor.
            vision_feature_layer (`int`, *optional*):
                Index into the vision tower's hidden states to read the patch features from.
            output_hidden_states, output_attentions, return_dict:
                As for the vision tower; its hidden states and attentions are returned when asked for.

        Returns:
            [`~modeling_outputs.BaseModelOutputWithPooling`]: the vision tower's output, with the projected features
            `(num_images, num_image_tokens, hidden_size)` as `pooler_output`.
        """
        if vision_feature_layer is None:
            vision_feature_layer = self.config.vision_feature_layer
        output_hidden_states = kwargs.pop("output_hidden_states", None)
        image_outputs = self.vision_tower(
            pixel_values.to(self.vision_projector.weight.dtype),
            output_hidden_states=True if output_hidden_states else vision_feature_layer,
            return_dict=True,
            **kwargs,
        )
        patch_features = image_outputs.hidden_states[vision_feature_layer][:, 1:]
        if not output_hidden_states:
            image_outputs.hidden_states = None
        image_outputs.pooler_output = self.vision_projector(patch_features)
        return image_outputs

    def project_dream_states(self, hidden_states: torch.FloatTensor) -> torch.FloatTensor:
        """Maps final-norm hidden states at dream-query positions to UNet conditions (`condition_dim` wide)."""
        return self.dream_projector(hidden_states.to(self.dream_projector.weight.device))

    def get_block_layout(self, input_ids: torch.LongTensor) -> BlockLayout:
        """
        Finds the image blocks (`<im_start>` + patches) and dream blocks (`<dream_start>` + patches) of `input_ids`,
        and checks that every non-empty block has exactly its expected number of patches.

        Raises:
            `ValueError`: naming the block kind and the counts when a block is incomplete or too long.
        """
        config = self.config
        batch_size, sequence_length = input_ids.shape
        if sequence_length < 2:  # one token per row (a decoding step) cannot hold an opener and its patches
            no_patches = torch.zeros_like(input_ids, dtype=torch.bool)
            return BlockLayout(no_patches, no_patches, torch.zeros_like(input_ids), 0, 0)
        positions = torch.arange(sequence_length, device=input_ids.device).expand(batch_size, -1)
        is_patch = input_ids == config.image_patch_token_id
        run_opener = torch.where(is_patch, -1, positions).cummax(dim=1).values
        opener_ids = input_ids.gather(1, run_opener.clamp(min=0))
        in_block = is_patch & (run_opener >= 0)
        image_patch_mask = in_block & (opener_ids == config.image_start_token_id)
        dream_patch_mask = in_block & (opener_ids == config.dream_start_token_id)
        index_in_block = positions - run_opener - 1
        opens_block = torch.zeros_like(is_patch)
        opens_block[:, :-1] = is_patch[:, 1:]
        num_image_blocks = int((opens_block & (input_ids == config.image_start_token_id)).sum())
        num_dream_blocks = int((opens_block & (input_ids == config.dream_start_token_id)).sum())
        self._check_block_lengths("image", image_patch_mask, index_in_block, num_image_blocks, config.num_image_tokens)
        self._check_block_lengths("dream", dream_patch_mask, index_in_block, num_dream_blocks, config.num_dream_queries)
        return BlockLayout(image_patch_mask, dream_patch_mask, index_in_block, num_image_blocks, num_dream_blocks)

    @staticmethod
    def _check_block_lengths(
        kind: str, patch_mask: torch.BoolTensor, index_in_block: torch.LongTensor, num_blocks: int, block_length: int
    ):
        num_patches = int(patch_mask.sum())
        longest_block = int(index_in_block[patch_mask].max()) + 1 if num_patches else 0
        if num_patches != num_blocks * block_length or longest_block > block_length:
            raise ValueError(
                f"The input holds {num_blocks} {kind} block(s) with {num_patches} <im_patch> positions in all, but "
                f"every {kind} block needs exactly {block_length}: {num_blocks * block_length} expected"
            )

    def get_placeholder_ids(self, inputs_embeds: torch.FloatTensor) -> torch.LongTensor:
        """
        Recovers the block tokens from embeddings, as transformers' `get_placeholder_mask` does: a position whose
        embedding equals that of `<im_patch>`, `<im_start>` or `<dream_start>` gets that token's id, every other
        position -1. The result locates image and dream blocks with `get_block_layout`.
        """
        config = self.config
        block_token_ids = torch.tensor(
            [config.image_patch_token_id, config.image_start_token_id, config.dream_start_token_id],
            device=inputs_embeds.device,
        )
        block_embeddings = self.get_input_embeddings()(block_token_ids).to(inputs_embeds.dtype)
        matches = (inputs_embeds.unsqueeze(-2) == block_embeddings).all(-1)
        return torch.where(matches.any(-1), block_token_ids[matches.int().argmax(-1)], -1)

    def embed_multimodal_inputs(
        self,
        input_ids: torch.LongTensor | None = None,
        pixel_values: torch.FloatTensor | None = None,
        inputs_embeds: torch.FloatTensor | None = None,
        run_unused_modules: bool = False,
        **kwargs: Unpack[TransformersKwargs],
    ) -> tuple[torch.FloatTensor, BlockLayout, BaseModelOutputWithPooling | None]:
        """
        Token embeddings of `input_ids` (or the given `inputs_embeds`, whose blocks are found from the embeddings of the
        block tokens) with the dream queries written into dream blocks and the image features of `pixel_values` (one
        image per image block, in row-major order) written into image blocks.

        With `run_unused_modules`, the dream queries run even when the input holds no dream block, and the vision
        tower and projector (on one blank image) even when it holds no image, each where it runs otherwise and
        adding exactly zero, so that the modules run in the same order whatever the input holds.

        Returns:
            The input embeddings, the block layout and the vision outputs of `get_image_features` (or `None`).
        """
        if inputs_embeds is None:
            inputs_embeds = self.get_input_embeddings()(input_ids)
        elif input_ids is None:
            input_ids = self.get_placeholder_ids(inputs_embeds)
        layout = self.get_block_layout(input_ids)
        num_images = 0 if pixel_values is None else pixel_values.shape[0]
        if num_images != layout.num_image_blocks:
            raise ValueError(
                f"The input holds {layout.num_image_blocks} image block(s) but {num_images} image(s) were given"
            )
        if layout.num_dream_blocks:
            dream_index = layout.index_in_block[layout.dream_patch_mask]
            queries = self.dream_queries(dream_index.to(self.dream_queries.weight.device))
            inputs_embeds = inputs_embeds.masked_scatter(
                layout.dream_patch_mask.unsqueeze(-1), queries.to(inputs_embeds.device, inputs_embeds.dtype)
            )
        elif run_unused_modules:
            inputs_embeds = inputs_embeds + self.unused_dream_queries_term(inputs_embeds)
        image_outputs = None
        if num_images:
            image_outputs = self.get_image_features(pixel_values, return_dict=True, **kwargs)
            image_features = image_outputs.pooler_output.to(inputs_embeds.device, inputs_embeds.dtype)
            inputs_embeds = inputs_embeds.masked_scatter(layout.image_patch_mask.unsqueeze(-1), image_features)
        elif run_unused_modules:
            inputs_embeds = inputs_embeds + self.unused_vision_term(inputs_embeds)
        return inputs_embeds, layout, image_outputs

    # The unused-module terms below are exactly zero but depend on a module the batch did not use. Added in training
    # where the module runs otherwise (dream queries, then vision tower and projector, before the language model;
    # the dream projector after it, see `unused_dream_conditions`), they give its parameters zero gradients and keep
    # the order in which modules run and gradients become ready the same whatever a batch holds, so every process of
    # a sharded run (FSDP, ZeRO, whose gradient buckets and module traces follow that order) runs the same
    # collectives on the same parameters. They take no parameter directly, only module outputs, so ZeRO-3 gathers
    # parameters through its module hooks alone.

    def unused_dream_queries_term(self, like: torch.FloatTensor) -> torch.FloatTensor:
        """Zero from the dream queries of one dream block, on `like`'s device and dtype."""
        index = torch.arange(self.config.num_dream_queries, device=self.dream_queries.weight.device)
        return self.dream_queries(index).sum().to(like.device, like.dtype) * 0.0

    def unused_vision_term(self, like: torch.FloatTensor) -> torch.FloatTensor:
        """Zero from the vision tower and projector run on one blank image, on `like`'s device and dtype."""
        vision_config = self.config.vision_config
        blank_image = like.new_zeros(1, vision_config.num_channels, vision_config.image_size, vision_config.image_size)
        return self.get_image_features(blank_image).pooler_output.sum().to(like.device, like.dtype) * 0.0

    def unused_dream_conditions(self, like: torch.FloatTensor) -> torch.FloatTensor:
        """
        The conditions of no dream block, `(0, num_dream_queries, condition_dim)`, from the dream projector run on an
        empty input: returned in training for a batch without dream blocks, so that the projector runs and its (zero)
        gradients arrive from the loss's diffusion part, as those of real conditions do (a loss must use
        `dream_conditions`, e.g. add `dream_conditions.sum() * 0` when it is empty, as `DreamLLMTrainer` does).
        """
        return self.project_dream_states(like.new_zeros(0, self.config.num_dream_queries, like.shape[-1]))

    @can_return_tuple
    @warn_on_old_cache_argument
    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        pixel_values: torch.FloatTensor | None = None,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.LongTensor | None = None,
        past_key_values: Cache | None = None,
        inputs_embeds: torch.FloatTensor | None = None,
        use_cache: bool | None = None,
        cache: Cache | None = None,
        **kwargs: Unpack[TransformersKwargs],
    ) -> DreamLLMModelOutputWithPast:
        """
        Runs the language model over text, image blocks and dream blocks.

        Args:
            input_ids (`torch.LongTensor` of shape `(batch_size, sequence_length)`):
                Token ids, with image and dream blocks expanded by the processor.
            pixel_values (`torch.FloatTensor` of shape `(num_images, channels, height, width)`, *optional*):
                One image per image block of `input_ids`, in row-major order.
            attention_mask, position_ids, past_key_values (or `cache`), use_cache:
                As for `LlamaModel`. Without `position_ids`, positions continue from the cache length (padding is not
                skipped); `generate` passes positions that skip padding.
            inputs_embeds (`torch.FloatTensor`, *optional*):
                Ready-made embeddings instead of `input_ids`. Image and dream blocks are found where the embeddings
                equal those of the block tokens (see `get_placeholder_ids`), so `pixel_values` may come with them.
            output_attentions, output_hidden_states:
                Returned for the language model, and for the vision tower in `image_outputs`.

        In training mode with gradients enabled, the dream queries, the vision tower and projector and the dream
        projector run on every call, in that order, contributing exactly zero when the batch holds no dream block or
        no image (see `unused_dream_queries_term`, `unused_vision_term`; `dream_conditions` is then an empty tensor,
        see `unused_dream_conditions`); in evaluation or under `torch.no_grad` nothing extra runs.
        """
        if (input_ids is None) == (inputs_embeds is None):
            raise ValueError("Pass exactly one of input_ids or inputs_embeds")
        vision_kwargs = {key: kwargs[key] for key in ("output_attentions", "output_hidden_states") if key in kwargs}
        run_unused_modules = self.training and torch.is_grad_enabled()
        inputs_embeds, layout, image_outputs = self.embed_multimodal_inputs(
            input_ids, pixel_values, inputs_embeds, run_unused_modules, **vision_kwargs
        )

        outputs = self.language_model(
            inputs_embeds=inputs_embeds,
            attention_mask=attention_mask,
            position_ids=position_ids,
            use_cache=use_cache,
            **{CACHE_ARGUMENT: cache if cache is not None else past_key_values},
            **kwargs,
        )
        last_hidden_state = outputs.last_hidden_state
        dream_conditions = None
        if layout.num_dream_blocks:
            dream_states = last_hidden_state[layout.dream_patch_mask.to(last_hidden_state.device)]
            dream_states = dream_states.view(layout.num_dream_blocks, self.config.num_dream_queries, -1)
            dream_conditions = self.project_dream_states(dream_states)
        elif run_unused_modules:
            dream_conditions = self.unused_dream_conditions(last_hidden_state)
        return DreamLLMModelOutputWithPast(
            last_hidden_state=last_hidden_state,
            **{CACHE_ARGUMENT: getattr(outputs, CACHE_ARGUMENT)},
            hidden_states=outputs.hidden_states,
            attentions=outputs.attentions,
            image_outputs=image_outputs,
            dream_conditions=dream_conditions,
        )


class DreamLLMForCausalLM(DreamLLMPreTrainedModel, GenerationMixin):
    """
    DreamLLM with its language-model head: next-token prediction over interleaved text, images to read and images to
    write, plus the UNet conditions of every dream block in the input.

    Example:

    ```python
    >>> import dreamllm
    >>> from transformers import AutoModelForCausalLM, AutoProcessor
    >>> model = AutoModelForCausalLM.from_pretrained("path/to/converted-dreamllm")
    >>> processor = AutoProcessor.from_pretrained("path/to/converted-dreamllm")
    >>> inputs = processor(text="<image>What is in the image?", images=image, return_tensors="pt")
    >>> answer = model.generate(**inputs, max_new_tokens=20)
    ```
    """

    _tied_weights_keys = {"lm_head.weight": "model.language_model.embed_tokens.weight"}
    _tp_plan = {"lm_head": "colwise_gather_output"}

    def __init__(self, config: DreamLLMConfig):
        super().__init__(config)
        self.model = DreamLLMModel(config)
        self.lm_head = nn.Linear(config.text_config.hidden_size, config.text_config.vocab_size, bias=False)
        self.post_init()
        if self.generation_config is not None:
            apply_dreamllm_generation_defaults(self.generation_config, config)

    def get_output_embeddings(self) -> nn.Module:
        return self.lm_head

    def set_output_embeddings(self, new_embeddings: nn.Module):
        self.lm_head = new_embeddings

    def get_image_features(
        self,
        pixel_values: torch.FloatTensor,
        vision_feature_layer: int | None = None,
        **kwargs: Unpack[TransformersKwargs],
    ) -> BaseModelOutputWithPooling:
        """The vision tower's output with the projected features as `pooler_output`; see `DreamLLMModel.get_image_features`."""
        return self.model.get_image_features(pixel_values, vision_feature_layer=vision_feature_layer, **kwargs)

    def resize_token_embeddings(
        self, new_num_tokens: int | None = None, pad_to_multiple_of: int | None = None, mean_resizing: bool = True
    ) -> nn.Embedding:
        """
        As `PreTrainedModel.resize_token_embeddings`, refusing a size that would drop DreamLLM's special tokens.

        Raises:
            `ValueError`: naming the special tokens whose ids would fall outside the new vocabulary.
        """
        if new_num_tokens is not None:
            new_size = new_num_tokens
            if pad_to_multiple_of is not None:
                new_size = -(-new_num_tokens // pad_to_multiple_of) * pad_to_multiple_of
            dropped = {name: token_id for name, token_id in self.config.special_token_ids.items() if token_id >= new_size}
            if dropped:
                raise ValueError(
                    f"resize_token_embeddings({new_num_tokens}) would drop DreamLLM's special tokens {dropped}: the "
                    f"vocabulary must keep at least {max(dropped.values()) + 1} tokens"
                )
        return super().resize_token_embeddings(new_num_tokens, pad_to_multiple_of, mean_resizing)

    @can_return_tuple
    @warn_on_old_cache_argument
    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        pixel_values: torch.FloatTensor | None = None,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.LongTensor | None = None,
        past_key_values: Cache | None = None,
        inputs_embeds: torch.FloatTensor | None = None,
        labels: torch.LongTensor | None = None,
        use_cache: bool | None = None,
        logits_to_keep: int | torch.Tensor = 0,
        cache: Cache | None = None,
        **kwargs: Unpack[TransformersKwargs],
    ) -> DreamLLMCausalLMOutputWithPast:
        """
        Args:
            input_ids, pixel_values, attention_mask, position_ids, past_key_values, inputs_embeds, use_cache:
                See [`DreamLLMModel.forward`].
            labels (`torch.LongTensor` of shape `(batch_size, sequence_length)`, *optional*):
                Target ids (shifted inside); -100 is ignored. The loss is the mean over the labels that are not
                ignored, and 0 when all are.
            shift_labels (`torch.LongTensor` of shape `(batch_size, sequence_length)`, *optional*):
                Targets already shifted (position i holds the target of position i), as sequence-parallel training
                passes them; used instead of `labels`.
            num_items_in_batch (`int` or `torch.Tensor`, *optional*):
                The number of targets the loss is divided by (all of an accumulated batch's), instead of this call's.
            logits_to_keep (`int` or `torch.Tensor`, *optional*):
                Compute logits only for the last `logits_to_keep` positions (0 = all).
        """
        num_items_in_batch = kwargs.pop("num_items_in_batch", None)
        shift_labels = kwargs.pop("shift_labels", None)
        outputs = self.model(
            input_ids=input_ids,
            pixel_values=pixel_values,
            attention_mask=attention_mask,
            position_ids=position_ids,
            inputs_embeds=inputs_embeds,
            use_cache=use_cache,
            **{CACHE_ARGUMENT: cache if cache is not None else past_key_values},
            **kwargs,
        )
        hidden_states = slice_logits_to_keep(outputs.last_hidden_state, logits_to_keep)
        logits = self.lm_head(hidden_states)
        loss = None
        if labels is not None or shift_labels is not None:
            loss = self.language_modeling_loss(logits, labels, num_items_in_batch, shift_labels)
        return DreamLLMCausalLMOutputWithPast(
            loss=loss,
            logits=logits,
            **{CACHE_ARGUMENT: getattr(outputs, CACHE_ARGUMENT)},
            hidden_states=outputs.hidden_states,
            attentions=outputs.attentions,
            image_outputs=outputs.image_outputs,
            dream_conditions=outputs.dream_conditions,
        )

    def language_modeling_loss(
        self,
        logits: torch.FloatTensor,
        labels: torch.LongTensor | None,
        num_items_in_batch: torch.Tensor | int | None = None,
        shift_labels: torch.LongTensor | None = None,
    ) -> torch.FloatTensor:
        """
        Next-token cross-entropy averaged over the targets that are not -100 (0 when there are none): `labels` are
        shifted inside, `shift_labels` are taken as they are.
        """
        if num_items_in_batch is None:
            targets = shift_labels if shift_labels is not None else labels[:, 1:]
            num_items_in_batch = (targets != -100).sum().clamp(min=1)
        return self.loss_function(
            logits=logits,
            labels=labels,
            vocab_size=self.config.text_config.vocab_size,
            num_items_in_batch=num_items_in_batch,
            shift_labels=None if shift_labels is None else shift_labels.contiguous(),
        )

    def dream_block_ids(self, batch_size: int, device: torch.device) -> torch.LongTensor:
        """The ids of one dream block per row: `<dream_start>` + Q x `<im_patch>` + `<dream_end>`."""
        config = self.config
        block = [config.dream_start_token_id] + [config.image_patch_token_id] * config.num_dream_queries
        block.append(config.dream_end_token_id)
        return torch.tensor(block, device=device).expand(batch_size, -1)

    def get_dream_conditions(
        self,
        input_ids: torch.LongTensor,
        attention_mask: torch.Tensor | None = None,
        pixel_values: torch.FloatTensor | None = None,
    ) -> torch.FloatTensor:
        """
        UNet conditions for an image that follows each prompt, as DreamLLM computes them for text-to-image: the
        prompt followed by a dream block (`<dream_start>`, the queries, `<dream_end>`), in one pass (the original runs
        the dream block on the prompt's cache; attention is causal, so the result is the same).

        Rows may be padded on either side: they are left-aligned and positioned from their first real token, so a
        row's condition does not depend on the other rows of the batch.

        Args:
            input_ids (`torch.LongTensor` of shape `(batch_size, sequence_length)`):
                Prompts (with BOS), e.g. from the processor. `[[bos]]` gives the unconditional condition.
            attention_mask (`torch.Tensor`, *optional*):
                1 for tokens, 0 for padding.
            pixel_values (`torch.FloatTensor`, *optional*):
                Images of the image blocks in the prompts.

        Returns:
            `torch.FloatTensor` of shape `(batch_size, num_dream_queries, condition_dim)`.
        """
        if attention_mask is None:
            attention_mask = torch.ones_like(input_ids)
        input_ids, attention_mask = left_align(input_ids, attention_mask)
        dream_ids = self.dream_block_ids(input_ids.shape[0], input_ids.device)
        input_ids = torch.cat([input_ids, dream_ids], dim=1)
        attention_mask = torch.cat([attention_mask, torch.ones_like(dream_ids)], dim=1)
        outputs = self.model(
            input_ids=input_ids,
            pixel_values=pixel_values,
            attention_mask=attention_mask,
            position_ids=(attention_mask.cumsum(-1) - 1).clamp(min=0),
            use_cache=False,
        )
        return outputs.dream_conditions

    def get_unconditional_dream_conditions(self, batch_size: int = 1) -> torch.FloatTensor:
        """
        The condition classifier-free guidance uses as "no prompt": the dream block after BOS alone (there is no
        learned null condition). Returns `(batch_size, num_dream_queries, condition_dim)`.
        """
        bos_ids = torch.tensor([[self.config.text_config.bos_token_id]], device=self.device)
        return self.get_dream_conditions(bos_ids).expand(batch_size, -1, -1)

    def generate(self, *args, **kwargs):
        """
        `GenerationMixin.generate`. A plain causal LM cannot draw: by the model's generation config it never samples
        the tokens only [`DreamLLMPipeline`] writes and stops at `<dream_start>`, warning once that the pipeline is what
        writes documents with images.
        """
        output = super().generate(*args, **kwargs)
        prompt = args[0] if args else kwargs.get("inputs", kwargs.get("input_ids"))
        sequences = output if isinstance(output, torch.Tensor) else output.sequences
        new_tokens = sequences[:, prompt.shape[1] :] if isinstance(prompt, torch.Tensor) else sequences
        if (new_tokens == self.config.dream_start_token_id).any():
            logger.warning_once(
                "The model stopped at <dream_start>: it wants to draw an image here, which generate() cannot do. "
                "Use dreamllm.DreamLLMPipeline to write documents with images."
            )
        return output

    def prepare_inputs_for_generation(
        self,
        input_ids: torch.LongTensor,
        inputs_embeds: torch.FloatTensor | None = None,
        pixel_values: torch.FloatTensor | None = None,
        **kwargs,
    ):
        """
        As `GenerationMixin.prepare_inputs_for_generation`, passing `pixel_values` to every forward whose ids still
        hold the image blocks (the prefill, and an assistant model's first pass over the prompt in assisted decoding),
        and to no other.
        """
        model_inputs = super().prepare_inputs_for_generation(input_ids, inputs_embeds=inputs_embeds, **kwargs)
        model_inputs.pop("pixel_values", None)
        if pixel_values is not None and self.holds_image_blocks(model_inputs):
            model_inputs["pixel_values"] = pixel_values
        return model_inputs

    def holds_image_blocks(self, model_inputs: dict) -> bool:
        """Whether the ids (or embeddings) a forward is about to receive are long enough to hold an image block, and do."""
        config = self.config
        fed_ids = model_inputs.get("input_ids")
        if fed_ids is None:
            return model_inputs.get("inputs_embeds") is not None
        if fed_ids.shape[1] <= config.num_image_tokens:  # a decoding step: no sync with the device
            return False
        return bool((fed_ids == config.image_start_token_id).any())

    def _expand_inputs_for_generation(self, expand_size: int = 1, is_encoder_decoder: bool = False, input_ids=None, **model_kwargs):
        """Repeats each row's group of images with the row (beam search, `num_return_sequences`)."""
        pixel_values = model_kwargs.pop("pixel_values", None)
        if pixel_values is not None and expand_size > 1:
            prompt_ids = input_ids
            if input_ids is None or not input_ids.shape[1]:  # generating from inputs_embeds
                prompt_ids = self.model.get_placeholder_ids(model_kwargs["inputs_embeds"])
            pixel_values = repeat_images_per_row(
                pixel_values, self.model.get_block_layout(prompt_ids).image_patch_mask, self.config, expand_size
            )
        input_ids, model_kwargs = super()._expand_inputs_for_generation(
            expand_size=expand_size, is_encoder_decoder=is_encoder_decoder, input_ids=input_ids, **model_kwargs
        )
        if pixel_values is not None:
            model_kwargs["pixel_values"] = pixel_values
        return input_ids, model_kwargs


def token_id_list(token_ids: int | list[int] | None) -> list[int]:
    """A generation setting that holds one token id, several or none (`eos_token_id`), as a list."""
    if token_ids is None:
        return []
    return [token_ids] if isinstance(token_ids, int) else list(token_ids)


def apply_dreamllm_generation_defaults(generation_config, config: DreamLLMConfig):
    """
    Makes a generation config safe for plain `generate`: the tokens only the pipeline writes (image and dream block
    tokens, placeholders, padding) are never sampled, and `<dream_start>` ends a sequence as EOS does.
    """
    pipeline_only = {token_id for name, token_id in config.special_token_ids.items() if name != "dream_start_token_id"}
    generation_config.suppress_tokens = sorted(set(generation_config.suppress_tokens or []) | pipeline_only)
    eos_token_ids = token_id_list(generation_config.eos_token_id)
    if config.dream_start_token_id not in eos_token_ids:
        eos_token_ids.append(config.dream_start_token_id)
    generation_config.eos_token_id = eos_token_ids
    generation_config._from_model_config = False  # edited: transformers must not rebuild it from the model config


def left_align(input_ids: torch.LongTensor, attention_mask: torch.Tensor) -> tuple[torch.LongTensor, torch.Tensor]:
    """Moves every row's padding to its left, keeping the order of its tokens."""
    order = torch.argsort(attention_mask, dim=1, stable=True)
    return input_ids.gather(1, order), attention_mask.gather(1, order)


def repeat_images_per_row(
    pixel_values: torch.FloatTensor, image_patch_mask: torch.BoolTensor, config: DreamLLMConfig, repeats: int
) -> torch.FloatTensor:
    """Given images in row-major order, repeats each row's group `repeats` times: rows [A, B], [C] -> A B A B C C."""
    images_per_row = (image_patch_mask.sum(dim=1) // config.num_image_tokens).tolist()
    groups = torch.split(pixel_values, images_per_row)
    return torch.cat([group.repeat(repeats, *([1] * (group.dim() - 1))) for group in groups])


__all__ = [
    "apply_dreamllm_generation_defaults",
    "DreamLLMCausalLMOutputWithPast",
    "DreamLLMForCausalLM",
    "DreamLLMModel",
    "DreamLLMModelOutputWithPast",
    "DreamLLMPreTrainedModel",
    "DreamQueries",
]
