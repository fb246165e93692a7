"""The toy-world DreamLLM: its components, and how each is pretrained before DreamLLM's own training.

The toy world (`dreamllm.toy_world`) has its own small "Stable Diffusion" and "CLIP", built and trained here:

- a VAE (scale factor 4: 64x64 pictures, 4x16x16 latents) trained to reconstruct toy pictures;
- a UNet over those latents, trained together with a :class:`ToyConditionEncoder` (this world's text encoder: it
  embeds the colour, the shape and the size word of a caption) and thrown away afterwards, as DreamLLM replaces CLIP's text encoder
  by its own dream queries;
- a CLIP vision encoder (64 px, 16 patches) trained to tell colour, shape, size and position, then frozen;
- a BPE tokenizer trained on the toy world's texts and a small Llama, trained from scratch during DreamLLM's stages.

`python -m dreamllm.toy_world.build_toy_model` runs these steps and DreamLLM's stages, resumably, and writes the shipped checkpoint.
"""

import math
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from diffusers import AutoencoderKL, ConfigMixin, DDPMScheduler, ModelMixin, UNet2DConditionModel
from diffusers.configuration_utils import register_to_config
from PIL import Image
from torch import nn
from tokenizers import Tokenizer, normalizers, pre_tokenizers, trainers
from tokenizers.models import BPE
from transformers import CLIPVisionConfig, CLIPVisionModel
from transformers.models.clip.image_processing_pil_clip import CLIPImageProcessorPil

from dreamllm.modeling_dreamllm import DreamLLMConfig, DreamLLMForCausalLM
from dreamllm.pipelines import DreamLLMPipeline, default_scheduler
from dreamllm.processing import DreamLLMProcessor
from dreamllm.processing.processing_dreamllm import VICUNA_V1_1_SYSTEM_MESSAGE
from dreamllm.processing.tokenization_dreamllm import (
    RELEASED_ADDED_TOKEN_ORDER,
    SPIECE_UNDERLINE,
    _add_tokens_in_order,
    _apply_legacy_pipeline,
    _wrap_backend,
)
from dreamllm.testing import config_for_tokenizer

from . import grammar
from . import world as toy_world

IMAGE_SIZE = toy_world.IMAGE_SIZE
PATCH_SIZE = 16
NUM_DREAM_QUERIES = 4
CONDITION_DIM = 64
LATENT_CHANNELS = 4


# ------------------------------------------------------------------------------------------------ text


TOKENIZER_VOCAB_SIZE = 700
"""Pieces of the toy tokenizer's BPE model (bytes and the DreamLLM tokens not counted)."""


def toy_corpus(num_samples: int = 3000, seed: int = 0) -> Iterator[str]:
    """The texts the toy model reads and writes, in the training phrasings only, and the Vicuna system message."""
    yield VICUNA_V1_1_SYSTEM_MESSAGE
    yield "USER: ASSISTANT:"
    yield grammar.REFUSAL
    for index in range(num_samples):
        rng = toy_world.sample_rng(seed, index)
        scene = toy_world.sample_scene(rng)
        yield toy_world.caption(scene, rng)
        yield from toy_world.question_answer(scene, rng)
        yield grammar.impossible_request(rng)
        prompt, document = toy_world.answer_document(rng, toy_world.sample_objects(rng))
        yield prompt
        yield from (item for item in document if isinstance(item, str))


def train_toy_tokenizer(texts: Iterable[str], vocab_size: int = TOKENIZER_VOCAB_SIZE, model_max_length: int = 512):
    """
    A byte-fallback BPE tokenizer trained on `texts` with the `tokenizers` library, in the Llama layout of
    `build_tiny_tokenizer` (legacy "▁" normalizer, `<unk>`/`<s>`/`</s>`, the 256 byte pieces, then the DreamLLM
    tokens): frequent words are one token, and a typo or a word never seen splits into known pieces (or bytes).
    """
    backend = Tokenizer(BPE(unk_token="<unk>", fuse_unk=True, byte_fallback=True))
    backend.normalizer = normalizers.Sequence([normalizers.Prepend(SPIECE_UNDERLINE), normalizers.Replace(" ", SPIECE_UNDERLINE)])
    backend.pre_tokenizer = pre_tokenizers.Sequence(  # for training only: pieces never span two words or punctuation
        [pre_tokenizers.Split(SPIECE_UNDERLINE, behavior="merged_with_next"), pre_tokenizers.Punctuation()]
    )
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=["<unk>", "<s>", "</s>", *(f"<0x{byte:02X}>" for byte in range(256))],
        initial_alphabet=[SPIECE_UNDERLINE, *(chr(code) for code in range(32, 127) if chr(code) != " ")],
        show_progress=False,
    )
    backend.train_from_iterator(texts, trainer=trainer)
    backend = _apply_legacy_pipeline(backend)
    _add_tokens_in_order(backend, ["<unk>", "<s>", "</s>", *RELEASED_ADDED_TOKEN_ORDER])
    return _wrap_backend(backend, unk_token="<unk>", bos_token="<s>", eos_token="</s>", model_max_length=model_max_length)


def toy_processor() -> DreamLLMProcessor:
    """The toy model's processor: a BPE tokenizer trained on the toy corpus, and a 64 px CLIP image processor."""
    image_processor = CLIPImageProcessorPil(
        size={"shortest_edge": IMAGE_SIZE}, crop_size={"height": IMAGE_SIZE, "width": IMAGE_SIZE}
    )
    return DreamLLMProcessor(
        image_processor=image_processor,
        tokenizer=train_toy_tokenizer(toy_corpus()),
        num_image_tokens=(IMAGE_SIZE // PATCH_SIZE) ** 2,
        num_dream_queries=NUM_DREAM_QUERIES,
    )


# ---------------------------------------------------------------------------------------------- components


def toy_vision_config() -> CLIPVisionConfig:
    return CLIPVisionConfig(
        hidden_size=96,
        intermediate_size=192,
        num_hidden_layers=4,
        num_attention_heads=4,
        image_size=IMAGE_SIZE,
        patch_size=PATCH_SIZE,
        projection_dim=96,
    )


def toy_config(tokenizer) -> DreamLLMConfig:
    """A DreamLLM of about 2M parameters: a 4-layer Llama, the toy vision encoder, 4 dream queries of width 64."""
    return config_for_tokenizer(
        tokenizer,
        text_config={
            "hidden_size": 128,
            "intermediate_size": 384,
            "num_hidden_layers": 4,
            "num_attention_heads": 4,
            "num_key_value_heads": 4,
            "max_position_embeddings": 512,
        },
        vision_config=toy_vision_config().to_dict(),
        num_dream_queries=NUM_DREAM_QUERIES,
        condition_dim=CONDITION_DIM,
    )


def toy_vae() -> AutoencoderKL:
    """A VAE with scale factor 4 for 64x64 pictures (4x16x16 latents), about 0.65M parameters."""
    return AutoencoderKL(
        block_out_channels=(16, 32, 64),
        down_block_types=("DownEncoderBlock2D",) * 3,
        up_block_types=("UpDecoderBlock2D",) * 3,
        latent_channels=LATENT_CHANNELS,
        norm_num_groups=8,
        layers_per_block=1,
        sample_size=IMAGE_SIZE,
        mid_block_add_attention=False,
    )


def toy_unet() -> UNet2DConditionModel:
    """A UNet over 4x16x16 latents with cross-attention to the dream conditions at 8x8 and 4x4, about 1.7M parameters."""
    return UNet2DConditionModel(
        sample_size=IMAGE_SIZE // 4,
        in_channels=LATENT_CHANNELS,
        out_channels=LATENT_CHANNELS,
        block_out_channels=(32, 64, 64),
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
        cross_attention_dim=CONDITION_DIM,
        attention_head_dim=32,
        layers_per_block=1,
        norm_num_groups=16,
    )


class ToyConditionEncoder(ModelMixin, ConfigMixin):
    """
    The toy world's text encoder for pretraining the UNet: a caption's colour, shape and size word (an index of
    `world.SIZE_RANGES`), embedded as `num_tokens` condition tokens (colour, shape, size, and learned context tokens);
    index -1 is "not said", a learned null condition (for classifier-free guidance, and for any size).
    """

    @register_to_config
    def __init__(self, num_colours: int = 6, num_shapes: int = 3, num_sizes: int = len(toy_world.SIZE_RANGES),
                 num_tokens: int = NUM_DREAM_QUERIES, condition_dim: int = CONDITION_DIM):
        super().__init__()
        self.colours = nn.Embedding(num_colours + 1, condition_dim)
        self.shapes = nn.Embedding(num_shapes + 1, condition_dim)
        self.sizes = nn.Embedding(num_sizes + 1, condition_dim)
        self.context = nn.Parameter(torch.randn(num_tokens - 3, condition_dim) * 0.02)

    def forward(self, colour: torch.LongTensor, shape: torch.LongTensor, size: torch.LongTensor | None = None) -> torch.Tensor:
        size = -torch.ones_like(colour) if size is None else size
        tokens = [
            embedding(torch.where(index < 0, embedding.num_embeddings - 1, index))
            for embedding, index in ((self.colours, colour), (self.shapes, shape), (self.sizes, size))
        ]
        return torch.cat([torch.stack(tokens, dim=1), self.context.expand(len(colour), -1, -1)], dim=1)


# -------------------------------------------------------------------------------------------- picture data


@dataclass
class ScenePictures:
    """Rendered random scenes: `pixels` uint8 [n, 3, 64, 64] and their colour, shape, size and centre."""

    pixels: torch.Tensor
    colour: torch.LongTensor
    shape: torch.LongTensor
    size: torch.Tensor
    center: torch.Tensor

    @classmethod
    def render(cls, num_scenes: int, seed: int) -> "ScenePictures":
        scenes = [toy_world.sample_scene(toy_world.sample_rng(seed, index)) for index in range(num_scenes)]
        pixels = np.stack([np.asarray(scene.render()) for scene in scenes]).transpose(0, 3, 1, 2)
        return cls(
            pixels=torch.from_numpy(np.ascontiguousarray(pixels)),
            colour=torch.tensor([toy_world.COLOUR_NAMES.index(scene.colour) for scene in scenes]),
            shape=torch.tensor([toy_world.SHAPES.index(scene.shape) for scene in scenes]),
            size=torch.tensor([scene.size for scene in scenes], dtype=torch.float32),
            center=torch.tensor([scene.center for scene in scenes], dtype=torch.float32),
        )

    def __len__(self) -> int:
        return len(self.pixels)

    @property
    def size_word(self) -> torch.LongTensor:
        """The index in `world.SIZE_RANGES` of the size word each picture's side has, -1 for none."""
        index = -torch.ones(len(self), dtype=torch.long)
        for word, (low, high) in enumerate(toy_world.SIZE_RANGES.values()):
            index[(self.size >= low) & (self.size <= high)] = word
        return index

    def batches(self, batch_size: int, generator: torch.Generator) -> Iterator[torch.LongTensor]:
        """Endless random batches of indices."""
        while True:
            yield from torch.randperm(len(self), generator=generator).split(batch_size)


def to_unit_range(pixels: torch.Tensor) -> torch.Tensor:
    """uint8 pictures -> floats in [-1, 1]."""
    return pixels.float() / 127.5 - 1.0


def to_pil(images: torch.Tensor) -> list[Image.Image]:
    """Floats in [-1, 1], [n, 3, H, W] -> PIL pictures."""
    array = ((images.clamp(-1, 1) + 1) * 127.5).round().byte().permute(0, 2, 3, 1).numpy()
    return [Image.fromarray(picture) for picture in array]


def train_loop(
    parameters: list[nn.Parameter],
    loss_fn: Callable[[torch.LongTensor], torch.Tensor],
    batches: Iterator[torch.LongTensor],
    steps: int,
    learning_rate: float,
    log: Callable[[str], None] = print,
    name: str = "",
) -> None:
    """AdamW with a short warm-up and cosine decay (toy pretraining stalls at a constant rate)."""
    optimizer = torch.optim.AdamW(parameters, lr=learning_rate, weight_decay=0.0)
    warmup = max(1, steps // 50)
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: min(1.0, (step + 1) / warmup) * 0.5 * (1 + math.cos(math.pi * min(step / steps, 1.0)))
    )
    start, running, count = time.perf_counter(), 0.0, 0
    for step in range(1, steps + 1):
        loss = loss_fn(next(batches))
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(parameters, 1.0)
        optimizer.step()
        schedule.step()
        running, count = running + loss.item(), count + 1
        if step % max(1, steps // 20) == 0 or step == steps:
            log(f"{name} step {step}/{steps} loss {running / count:.4f} ({time.perf_counter() - start:.0f} s)")
            running, count = 0.0, 0


# -------------------------------------------------------------------------------------------------- VAE


def train_vae(
    vae: AutoencoderKL, pictures: ScenePictures, steps: int, batch_size: int = 16, kl_weight: float = 1e-6,
    learning_rate: float = 1e-3, seed: int = 0, log: Callable[[str], None] = print,
) -> AutoencoderKL:
    """
    Reconstruction (MSE) plus a small KL term; then makes the posterior deterministic (see
    `make_posterior_deterministic`) and sets `scaling_factor` so that latents have unit variance.
    """
    generator = torch.Generator().manual_seed(seed)
    vae.train()

    def loss_fn(indices):
        images = to_unit_range(pictures.pixels[indices])
        posterior = vae.encode(images).latent_dist
        reconstruction = vae.decode(posterior.sample(generator)).sample
        return F.mse_loss(reconstruction, images) + kl_weight * posterior.kl().mean()

    train_loop(list(vae.parameters()), loss_fn, pictures.batches(batch_size, generator), steps, learning_rate, log, "vae")
    vae.eval()
    make_posterior_deterministic(vae)
    with torch.no_grad():
        latents = vae.encode(to_unit_range(pictures.pixels[:512])).latent_dist.mean
    vae.register_to_config(scaling_factor=float(1.0 / latents.std()))
    return vae


@torch.no_grad()
def make_posterior_deterministic(vae: AutoencoderKL, log_variance: float = -30.0) -> AutoencoderKL:
    """
    Fixes the posterior log-variance at `log_variance` (diffusers' lower clamp), so a posterior sample is its mean.

    With a KL weight this small the variance carries no information, yet it stays large (about the latents' own
    spread) in channels the decoder learned to ignore. DreamLLM's diffusion loss encodes its targets with posterior
    *samples*, as Stable Diffusion's training does; that noise hides the condition's effect from the loss, so the dream
    queries cannot learn from it. The UNet is trained on posterior means, and pictures decode from means alike.
    """
    log_variance_rows = slice(vae.config.latent_channels, 2 * vae.config.latent_channels)
    vae.quant_conv.weight[log_variance_rows] = 0.0
    vae.quant_conv.bias[log_variance_rows] = log_variance
    return vae


# ------------------------------------------------------------------------------------------ vision encoder


class VisionProbe(nn.Module):
    """Heads that read colour, shape, size and position from the mean of the features DreamLLM uses."""

    def __init__(self, hidden_size: int):
        super().__init__()
        self.colour = nn.Linear(hidden_size, len(toy_world.COLOUR_NAMES))
        self.shape = nn.Linear(hidden_size, len(toy_world.SHAPES))
        self.geometry = nn.Linear(hidden_size, 3)

    def forward(self, features: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        pooled = features.mean(1)
        return self.colour(pooled), self.shape(pooled), self.geometry(pooled)


def vision_features(encoder: CLIPVisionModel, pixel_values: torch.Tensor, layer: int = -2) -> torch.Tensor:
    """The patch features DreamLLM reads: the hidden states of `layer`, CLS dropped."""
    return encoder(pixel_values, output_hidden_states=True).hidden_states[layer][:, 1:]


def clip_pixel_values(image_processor: CLIPImageProcessorPil, pixels: torch.Tensor) -> torch.Tensor:
    """The processor's normalisation of 64x64 uint8 pictures (no resizing needed at the native size)."""
    mean = torch.tensor(image_processor.image_mean).view(1, 3, 1, 1)
    std = torch.tensor(image_processor.image_std).view(1, 3, 1, 1)
    return (pixels.float() / 255.0 - mean) / std


def train_vision_encoder(
    encoder: CLIPVisionModel, image_processor: CLIPImageProcessorPil, pictures: ScenePictures, steps: int,
    batch_size: int = 64, learning_rate: float = 2e-3, seed: int = 0, log: Callable[[str], None] = print,
) -> CLIPVisionModel:
    """Supervised: colour and shape classification, size and centre regression, from the penultimate layer."""
    generator = torch.Generator().manual_seed(seed)
    probe = VisionProbe(encoder.config.hidden_size)
    encoder.train()

    def loss_fn(indices):
        colour, shape, geometry = probe(vision_features(encoder, clip_pixel_values(image_processor, pictures.pixels[indices])))
        target_geometry = torch.cat([pictures.size[indices, None], pictures.center[indices]], dim=1) / IMAGE_SIZE
        return (
            F.cross_entropy(colour, pictures.colour[indices])
            + F.cross_entropy(shape, pictures.shape[indices])
            + 10 * F.mse_loss(geometry, target_geometry)
        )

    parameters = list(encoder.parameters()) + list(probe.parameters())
    train_loop(parameters, loss_fn, pictures.batches(batch_size, generator), steps, learning_rate, log, "vision")
    return encoder.eval()


# ------------------------------------------------------------------------------------------------- UNet


@torch.no_grad()
def encode_latents(vae: AutoencoderKL, pixels: torch.Tensor, batch_size: int = 256) -> torch.Tensor:
    """Posterior means of the pictures times the scaling factor."""
    means = [vae.encode(to_unit_range(chunk)).latent_dist.mean for chunk in pixels.split(batch_size)]
    return torch.cat(means) * vae.config.scaling_factor


def train_unet(
    unet: UNet2DConditionModel, encoder: ToyConditionEncoder, vae: AutoencoderKL, pictures: ScenePictures,
    steps: int, batch_size: int = 64, caption_dropout: float = 0.1, size_dropout: float = 0.5,
    learning_rate: float = 1e-3, seed: int = 0, log: Callable[[str], None] = print,
) -> UNet2DConditionModel:
    """Noise prediction on the VAE latents, conditioned on the caption encoder (dropped to null for guidance; the size
    word alone dropped with `size_dropout`, as captions and requests often leave it out)."""
    generator = torch.Generator().manual_seed(seed)
    scheduler = default_scheduler()
    latents = encode_latents(vae, pictures.pixels)
    size_word = pictures.size_word
    unet.train()

    def loss_fn(indices):
        clean = latents[indices]
        noise = torch.randn(clean.shape, generator=generator)
        timesteps = torch.randint(0, scheduler.config.num_train_timesteps, (len(indices),), generator=generator)
        keep = torch.rand(len(indices), generator=generator) >= caption_dropout
        sized = keep & (torch.rand(len(indices), generator=generator) >= size_dropout)
        conditions = encoder(
            torch.where(keep, pictures.colour[indices], -1),
            torch.where(keep, pictures.shape[indices], -1),
            torch.where(sized, size_word[indices], -1),
        )
        prediction = unet(scheduler.add_noise(clean, noise, timesteps), timesteps, conditions).sample
        return F.mse_loss(prediction, noise)

    parameters = list(unet.parameters()) + list(encoder.parameters())
    train_loop(parameters, loss_fn, pictures.batches(batch_size, generator), steps, learning_rate, log, "unet")
    return unet.eval()


@torch.no_grad()
def sample_with_condition_encoder(
    unet: UNet2DConditionModel, encoder: ToyConditionEncoder, vae: AutoencoderKL, colour: torch.LongTensor,
    shape: torch.LongTensor, size: torch.LongTensor | None = None, steps: int = 50, guidance_scale: float = 3.0,
    seed: int = 0,
) -> torch.Tensor:
    """Pictures from the pretrained UNet and its caption encoder (to check the UNet before DreamLLM's stages);
    `size` holds indices of `world.SIZE_RANGES` (-1: any size)."""
    scheduler = DDPMScheduler.from_config(default_scheduler().config)
    scheduler.set_timesteps(steps)
    generator = torch.Generator().manual_seed(seed)
    side = unet.config.sample_size
    latents = torch.randn((len(colour), LATENT_CHANNELS, side, side), generator=generator)
    conditions = torch.cat([encoder(-torch.ones_like(colour), -torch.ones_like(shape)), encoder(colour, shape, size)])
    for t in scheduler.timesteps:
        unconditional, conditional = unet(torch.cat([latents] * 2), t, conditions).sample.chunk(2)
        noise = unconditional + guidance_scale * (conditional - unconditional)
        latents = scheduler.step(noise, t, latents, generator=generator).prev_sample
    return vae.decode(latents / vae.config.scaling_factor).sample


# ----------------------------------------------------------------------------------------------- assembly


def assemble_pipeline(
    vae: AutoencoderKL, unet: UNet2DConditionModel, vision_encoder: CLIPVisionModel, processor: DreamLLMProcessor,
    seed: int = 0,
) -> DreamLLMPipeline:
    """A DreamLLMPipeline with the pretrained toy components and a language model initialised at random."""
    torch.manual_seed(seed)
    model = DreamLLMForCausalLM(toy_config(processor.tokenizer))
    model.model.vision_tower.load_state_dict(vision_encoder.state_dict())
    return DreamLLMPipeline(model=model.eval(), processor=processor, unet=unet, vae=vae, scheduler=default_scheduler())


__all__ = [
    "ScenePictures",
    "ToyConditionEncoder",
    "assemble_pipeline",
    "sample_with_condition_encoder",
    "toy_config",
    "toy_processor",
    "toy_unet",
    "toy_vae",
    "toy_vision_config",
    "toy_corpus",
    "train_toy_tokenizer",
    "train_unet",
    "train_vae",
    "train_vision_encoder",
]
