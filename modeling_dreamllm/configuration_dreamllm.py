"""Configuration of DreamLLM: a Llama language model that reads images through CLIP and writes them through
learned dream queries whose hidden states condition a Stable Diffusion UNet."""

from transformers import AutoConfig, PreTrainedConfig
from transformers.configuration_utils import SubConfigSpec

from dreamllm.hub_files import NoSourceCopy


ADDED_TOKENS_ORDER = (
    "pad_token_id",
    "image_start_token_id",
    "dream_end_token_id",
    "dream_start_token_id",
    "image_patch_token_id",
    "image_end_token_id",
    "image_token_id",
    "dream_token_id",
)
"""The order in which the released DreamLLM checkpoints number the eight tokens they add to the Llama vocabulary."""


class DreamLLMConfig(NoSourceCopy, PreTrainedConfig):
    r"""
    Configuration of a [`DreamLLMForCausalLM`]. The defaults describe the released DreamLLM-7B: Vicuna-7B v1.1 with
    8 added tokens (vocabulary 32008), CLIP ViT-L/14 at 224 px read at its penultimate layer (256 patch features),
    64 dream queries, and conditions of width 1024 for the Stable Diffusion 2.1-base UNet.

    Args:
        text_config (`dict` or `LlamaConfig`, *optional*):
            The language model.
        vision_config (`dict` or `CLIPVisionConfig`, *optional*):
            The vision tower that reads input images.
        num_dream_queries (`int`, *optional*, defaults to 64):
            Learned query vectors written into every dream block; their output states condition the UNet.
        vision_feature_layer (`int`, *optional*, defaults to -2):
            Index into the vision tower's hidden states whose patch features (CLS dropped) are projected into the LLM.
        condition_dim (`int`, *optional*, defaults to 1024):
            Width of the dream conditions, equal to the UNet's `cross_attention_dim`.
        pad_token_id, image_token_id, image_patch_token_id, image_start_token_id, image_end_token_id, dream_token_id,
        dream_start_token_id, dream_end_token_id (`int`, *optional*):
            Ids of `[PAD]`, `<image>`, `<im_patch>`, `<im_start>`, `<im_end>`, `<dream>`, `<dream_start>` and
            `<dream_end>`. The released checkpoints do not number them in list order: converted models read them from
            the checkpoint. Left unset, they are the last eight ids of the vocabulary in the released order
            (`ADDED_TOKENS_ORDER`).
        loss_weight_lm (`float`, *optional*, defaults to 1.0):
            Weight of the language-model cross-entropy in the training objective.
        loss_weight_diffusion (`float`, *optional*, defaults to 10.0):
            Weight of the noise-prediction MSE in the training objective.
        tie_word_embeddings (`bool`, *optional*, defaults to `False`):
            Whether the LM head shares the input embedding matrix.

    Example:

    ```python
    >>> from dreamllm import DreamLLMConfig, DreamLLMForCausalLM
    >>> config = DreamLLMConfig()
    >>> config.num_image_tokens
    256
    ```
    """

    model_type = "dreamllm"
    sub_configs_defaults = {
        "text_config": SubConfigSpec(
            config_class=AutoConfig,
            model_type="llama",
            init_kwargs={"vocab_size": 32008, "max_position_embeddings": 2048, "rms_norm_eps": 1e-6, "pad_token_id": 0},
        ),
        "vision_config": SubConfigSpec(
            config_class=AutoConfig,
            model_type="clip_vision_model",
            init_kwargs={
                "hidden_size": 1024,
                "intermediate_size": 4096,
                "num_hidden_layers": 24,
                "num_attention_heads": 16,
                "image_size": 224,
                "patch_size": 14,
                "projection_dim": 768,
                "hidden_act": "quick_gelu",
            },
        ),
    }

    text_config: dict | PreTrainedConfig | None = None
    vision_config: dict | PreTrainedConfig | None = None
    num_dream_queries: int = 64
    vision_feature_layer: int = -2
    condition_dim: int = 1024
    pad_token_id: int | None = None
    image_start_token_id: int | None = None
    dream_end_token_id: int | None = None
    dream_start_token_id: int | None = None
    image_patch_token_id: int | None = None
    image_end_token_id: int | None = None
    image_token_id: int | None = None
    dream_token_id: int | None = None
    loss_weight_lm: float = 1.0
    loss_weight_diffusion: float = 10.0
    tie_word_embeddings: bool = False

    def __post_init__(self, **kwargs):
        super().__post_init__(**kwargs)
        self.fill_special_token_ids()
        self.validate_dreamllm_fields()

    def fill_special_token_ids(self):
        """
        Gives every special token left unset the id the released checkpoints give it: the eight added tokens are the
        last eight of the vocabulary, in the order of `ADDED_TOKENS_ORDER` (32000-32007 for the 32008 of DreamLLM-7B).
        """
        first_added_id = self.text_config.vocab_size - len(ADDED_TOKENS_ORDER)
        for offset, name in enumerate(ADDED_TOKENS_ORDER):
            if getattr(self, name) is None:
                setattr(self, name, first_added_id + offset)

    def validate_dreamllm_fields(self):
        """Raises a `ValueError` naming the field when the DreamLLM-specific settings cannot describe a model."""
        if self.num_dream_queries < 1:
            raise ValueError(f"num_dream_queries must be at least 1, got {self.num_dream_queries}")
        if self.condition_dim < 1:
            raise ValueError(f"condition_dim must be at least 1, got {self.condition_dim}")
        num_vision_states = self.vision_config.num_hidden_layers + 1
        if not -num_vision_states <= self.vision_feature_layer < num_vision_states:
            raise ValueError(
                f"vision_feature_layer={self.vision_feature_layer} is outside the {num_vision_states} hidden states "
                "of the vision tower"
            )
        if self.vision_config.image_size % self.vision_config.patch_size:
            raise ValueError(
                f"vision_config.image_size ({self.vision_config.image_size}) is not a multiple of its patch_size "
                f"({self.vision_config.patch_size})"
            )
        token_ids = self.special_token_ids
        if len(set(token_ids.values())) != len(token_ids):
            raise ValueError(f"The DreamLLM special tokens need distinct ids, got {token_ids}")
        vocab_size = self.text_config.vocab_size
        out_of_range = {name: token_id for name, token_id in token_ids.items() if not 0 <= token_id < vocab_size}
        if out_of_range:
            raise ValueError(f"Special token ids {out_of_range} are outside the vocabulary of size {vocab_size}")

    @property
    def special_token_ids(self) -> dict[str, int]:
        """The ids of the eight tokens DreamLLM adds to the Llama vocabulary, by config field name."""
        names = (
            "pad_token_id",
            "image_token_id",
            "image_patch_token_id",
            "image_start_token_id",
            "image_end_token_id",
            "dream_token_id",
            "dream_start_token_id",
            "dream_end_token_id",
        )
        return {name: getattr(self, name) for name in names}

    @property
    def num_image_tokens(self) -> int:
        """Number of `<im_patch>` positions of one input image: one per vision patch (the CLS token is dropped)."""
        return (self.vision_config.image_size // self.vision_config.patch_size) ** 2


__all__ = ["DreamLLMConfig"]
