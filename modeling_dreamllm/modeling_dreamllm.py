"""DreamLLM: a Llama language model that reads images through CLIP features and writes images through dream queries.

Input images sit in the token stream as `<im_start>` + N x `<im_patch>` + `<im_end>`; the N patch positions receive the
projected CLIP features. Images to generate sit as `<dream_start>` + Q x `<im_patch>` + `<dream_end>`; the Q patch
positions receive the learned dream queries, and the final-norm hidden states at those positions, projected to
`condition_dim`, condition a Stable Diffusion UNet (see `dreamllm.pipelines`).
"""

import inspect
from dataclasses import dataclass

import torch
from torch import nn
from transformers import AutoModel, GenerationMixin, LlamaModel, PreTrainedModel
from transformers import initialization as init
from transformers.cache_utils import Cache
from transformers.modeling_outputs import BaseModelOutputWithPast, ModelOutput
from transformers.modeling_utils import slice_logits_to_keep
from transformers.utils.generic import can_return_tuple

from .configuration_dreamllm import DreamLLMConfig

CACHE_ARGUMENT = "cache" if "cache" in inspect.signature(LlamaModel.forward).parameters else "past_key_values"
"""The name transformers gives the key/value cache in forward arguments and outputs: "past_key_values" up to 5.23,
"cache" from 5.24 on. DreamLLM accepts both and returns the installed version's."""


@dataclass
class DreamLLMModelOutputWithPast(BaseModelOutputWithPast):
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
        image_hidden_states (`torch.FloatTensor` of shape `(num_images, num_image_tokens, hidden_size)`, *optional*):
            Projected vision features written into the image blocks of the input.
        dream_conditions (`torch.FloatTensor` of shape `(num_dream_blocks, num_dream_queries, condition_dim)`, *optional*):
            UNet conditions of every dream block of the input, in row-major order.
    """

    image_hidden_states: torch.FloatTensor | None = None
    dream_conditions: torch.FloatTensor | None = None


@dataclass
class DreamLLMCausalLMOutputWithPast(ModelOutput):
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
        image_hidden_states (`torch.FloatTensor`, *optional*):
            Projected vision features written into the image blocks of the input.
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
    image_hidden_states: torch.FloatTensor | None = None
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


class DreamLLMPreTrainedModel(PreTrainedModel):
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

    def _init_weights(self, module):
        super()._init_weights(module)
        if isinstance(module, DreamQueries):
            init.normal_(module.weight, mean=0.0, std=self.config.text_config.initializer_range)


class DreamLLMModel(DreamLLMPreTrainedModel):
    """The DreamLLM backbone: vision tower + vision projector, Llama, dream queries and dream projector."""

    def __init__(self, config: DreamLLMConfig):
        super().__init__(config)
        text_hidden_size = config.text_config.hidden_size
        self.vision_tower = AutoModel.from_config(config.vision_config)
        self.vision_projector = nn.Linear(config.vision_config.hidden_size, text_hidden_size, bias=True)
        self.language_model = AutoModel.from_config(config.text_config)
        self.dream_queries = DreamQueries(config.num_dream_queries, text_hidden_size)
        self.dream_projector = nn.Linear(text_hidden_size, config.condition_dim, bias=False)
        self.post_init()

    def get_image_features(self, pixel_values: torch.FloatTensor) -> torch.FloatTensor:
        """
        Encodes images into language-model inputs: the vision tower's hidden states at `config.vision_feature_layer`
        (no post-layernorm), CLS token dropped, through the vision projector.

        Args:
            pixel_values (`torch.FloatTensor` of shape `(num_images, channels, height, width)`):
                Images prepared by the processor's image processor.

        Returns:
            `torch.FloatTensor` of shape `(num_images, num_image_tokens, hidden_size)`.
        """
        vision_dtype = self.vision_projector.weight.dtype
        feature_layer = self.config.vision_feature_layer
        vision_outputs = self.vision_tower(pixel_values.to(vision_dtype), output_hidden_states=feature_layer)
        patch_features = vision_outputs.hidden_states[feature_layer][:, 1:]
        return self.vision_projector(patch_features)

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

    def embed_multimodal_inputs(
        self,
        input_ids: torch.LongTensor,
        pixel_values: torch.FloatTensor | None = None,
        run_unused_modules: bool = False,
    ) -> tuple[torch.FloatTensor, BlockLayout, torch.FloatTensor | None]:
        """
        Token embeddings of `input_ids` with the dream queries written into dream blocks and the image features of
        `pixel_values` (one image per image block, in row-major order) written into image blocks.

        With `run_unused_modules`, the dream queries run even when the input holds no dream block, and the vision
        tower and projector (on one blank image) even when it holds no image, each where it runs otherwise and
        adding exactly zero, so that the modules run in the same order whatever the input holds.

        Returns:
            The input embeddings, the block layout and the projected image features (or `None`).
        """
        layout = self.get_block_layout(input_ids)
        inputs_embeds = self.get_input_embeddings()(input_ids)
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
        image_features = None
        if num_images:
            image_features = self.get_image_features(pixel_values)
            inputs_embeds = inputs_embeds.masked_scatter(
                layout.image_patch_mask.unsqueeze(-1), image_features.to(inputs_embeds.device, inputs_embeds.dtype)
            )
        elif run_unused_modules:
            inputs_embeds = inputs_embeds + self.unused_vision_term(inputs_embeds)
        return inputs_embeds, layout, image_features

    # The unused-module terms below are exactly zero but depend on a module the batch did not use. Added in training
    # where the module runs otherwise (dream queries, then vision tower and projector, before the language model;
    # the dream projector after it, see `unused_dream_conditions`), they give its parameters zero gradients and keep the order in which modules run and
    # gradients become ready the same whatever a batch holds, so every process of a sharded run (FSDP, ZeRO, whose
    # gradient buckets follow that order) runs the same collectives on the same parameters. They take no parameter
    # directly, only module outputs, so ZeRO-3 gathers parameters through its module hooks alone.

    def unused_dream_queries_term(self, like: torch.FloatTensor) -> torch.FloatTensor:
        """Zero from the dream queries of one dream block, on `like`'s device and dtype."""
        index = torch.arange(self.config.num_dream_queries, device=self.dream_queries.weight.device)
        return self.dream_queries(index).sum().to(like.device, like.dtype) * 0.0

    def unused_vision_term(self, like: torch.FloatTensor) -> torch.FloatTensor:
        """Zero from the vision tower and projector run on one blank image, on `like`'s device and dtype."""
        vision_config = self.config.vision_config
        blank_image = like.new_zeros(1, vision_config.num_channels, vision_config.image_size, vision_config.image_size)
        return self.get_image_features(blank_image).sum().to(like.device, like.dtype) * 0.0

    def unused_dream_conditions(self, like: torch.FloatTensor) -> torch.FloatTensor:
        """
        The conditions of no dream block, `(0, num_dream_queries, condition_dim)`, from the dream projector run on an
        empty input: returned in training for a batch without dream blocks, so that the projector runs and its (zero)
        gradients arrive from the loss's diffusion part, as those of real conditions do (a loss must use
        `dream_conditions`, e.g. add `dream_conditions.sum() * 0` when it is empty, as `DreamLLMTrainer` does).
        """
        return self.project_dream_states(like.new_zeros(0, self.config.num_dream_queries, like.shape[-1]))

    @can_return_tuple
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
        **kwargs,
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
                Ready-made embeddings instead of `input_ids`; blocks are then not located, so no images can be given
                and no dream conditions are returned.

        In training mode with gradients enabled, the dream queries, the vision tower and projector and the dream
        projector run on every call, in that order, contributing exactly zero when the batch holds no dream block or
        no image (see `unused_dream_queries_term`, `unused_vision_term`; `dream_conditions` is then an empty tensor,
        see `unused_dream_conditions`); in evaluation or under `torch.no_grad` nothing extra runs.
        """
        if (input_ids is None) == (inputs_embeds is None):
            raise ValueError("Pass exactly one of input_ids or inputs_embeds")
        layout = image_features = None
        run_unused_modules = self.training and torch.is_grad_enabled()
        if inputs_embeds is None:
            inputs_embeds, layout, image_features = self.embed_multimodal_inputs(
                input_ids, pixel_values, run_unused_modules
            )
        elif pixel_values is not None:
            raise ValueError("pixel_values need input_ids to locate their image blocks; inputs_embeds was given")
        elif run_unused_modules:
            inputs_embeds = inputs_embeds + self.unused_dream_queries_term(inputs_embeds)
            inputs_embeds = inputs_embeds + self.unused_vision_term(inputs_embeds)

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
        if layout is not None and layout.num_dream_blocks:
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
            image_hidden_states=image_features,
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

    def __init__(self, config: DreamLLMConfig):
        super().__init__(config)
        self.model = DreamLLMModel(config)
        self.lm_head = nn.Linear(config.text_config.hidden_size, config.text_config.vocab_size, bias=False)
        self.post_init()

    def get_output_embeddings(self) -> nn.Module:
        return self.lm_head

    def set_output_embeddings(self, new_embeddings: nn.Module):
        self.lm_head = new_embeddings

    def get_image_features(self, pixel_values: torch.FloatTensor) -> torch.FloatTensor:
        """Projected vision features `(num_images, num_image_tokens, hidden_size)`; see `DreamLLMModel.get_image_features`."""
        return self.model.get_image_features(pixel_values)

    @can_return_tuple
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
        **kwargs,
    ) -> DreamLLMCausalLMOutputWithPast:
        """
        Args:
            input_ids, pixel_values, attention_mask, position_ids, past_key_values, inputs_embeds, use_cache:
                See [`DreamLLMModel.forward`].
            labels (`torch.LongTensor` of shape `(batch_size, sequence_length)`, *optional*):
                Target ids (shifted inside); -100 is ignored. The loss is the mean over the labels that are not
                ignored, and 0 when all are.
            logits_to_keep (`int` or `torch.Tensor`, *optional*):
                Compute logits only for the last `logits_to_keep` positions (0 = all).
        """
        num_items_in_batch = kwargs.pop("num_items_in_batch", None)
        outputs = self.model(
            input_ids=input_ids,
            pixel_values=pixel_values,
            attention_mask=attention_mask,
            position_ids=position_ids,
            past_key_values=past_key_values,
            inputs_embeds=inputs_embeds,
            use_cache=use_cache,
            cache=cache,
            **kwargs,
        )
        hidden_states = slice_logits_to_keep(outputs.last_hidden_state, logits_to_keep)
        logits = self.lm_head(hidden_states)
        loss = None
        if labels is not None:
            loss = self.language_modeling_loss(logits, labels, num_items_in_batch)
        return DreamLLMCausalLMOutputWithPast(
            loss=loss,
            logits=logits,
            **{CACHE_ARGUMENT: getattr(outputs, CACHE_ARGUMENT)},
            hidden_states=outputs.hidden_states,
            attentions=outputs.attentions,
            image_hidden_states=outputs.image_hidden_states,
            dream_conditions=outputs.dream_conditions,
        )

    def language_modeling_loss(
        self,
        logits: torch.FloatTensor,
        labels: torch.LongTensor,
        num_items_in_batch: torch.Tensor | int | None = None,
    ) -> torch.FloatTensor:
        """Shifted next-token cross-entropy averaged over the targets that are not -100 (0 when there are none)."""
        if num_items_in_batch is None:
            num_items_in_batch = (labels[:, 1:] != -100).sum().clamp(min=1)
        return self.loss_function(
            logits=logits,
            labels=labels,
            vocab_size=self.config.text_config.vocab_size,
            num_items_in_batch=num_items_in_batch,
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

    def _expand_inputs_for_generation(self, expand_size: int = 1, is_encoder_decoder: bool = False, input_ids=None, **model_kwargs):
        """Repeats each row's group of images with the row (beam search, `num_return_sequences`)."""
        pixel_values = model_kwargs.pop("pixel_values", None)
        if pixel_values is not None and expand_size > 1:
            pixel_values = repeat_images_per_row(
                pixel_values, self.model.get_block_layout(input_ids).image_patch_mask, self.config, expand_size
            )
        input_ids, model_kwargs = super()._expand_inputs_for_generation(
            expand_size=expand_size, is_encoder_decoder=is_encoder_decoder, input_ids=input_ids, **model_kwargs
        )
        if pixel_values is not None:
            model_kwargs["pixel_values"] = pixel_values
        return input_ids, model_kwargs


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
    "DreamLLMCausalLMOutputWithPast",
    "DreamLLMForCausalLM",
    "DreamLLMModel",
    "DreamLLMModelOutputWithPast",
    "DreamLLMPreTrainedModel",
    "DreamQueries",
]
