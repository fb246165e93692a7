"""Overhead of `DreamLLMPipeline.text_to_image` over diffusers' `StableDiffusionPipeline`, in one process.

Both pipelines share the same UNet, VAE and scheduler and run the same number of steps with guidance. Stable
Diffusion is fed ready-made `prompt_embeds` / `negative_prompt_embeds` of the shape DreamLLM produces
(num_dream_queries x condition_dim), so it does no text encoding at all; DreamLLM computes its conditions with the
language model: the prompt and a dream block in one pass, and the dream block after BOS alone for the unconditional
branch. The ratio is therefore the whole cost of DreamLLM's conditioning and of our sampling loop; the script also
reports the conditioning's share and the loop alone. Target: <= 1.03x (the paper reports 1.055x for DreamLLM-7B
against SD 2.1 with its CLIP text encoder). The conditioning is a fixed cost per call, so its share falls with more
steps and depends on the language model / UNet size ratio, which random components only approximate.

The components are random and moderately sized so that the script runs on a CPU in a few minutes:
`python benchmarks/bench_text_to_image.py [--steps 50] [--repeats 15] [--threads 1]` (50 is `text_to_image`'s
default).
"""

import argparse
import statistics
import time

import torch
from diffusers import AutoencoderKL, StableDiffusionPipeline, UNet2DConditionModel
from transformers.models.clip.image_processing_pil_clip import CLIPImageProcessorPil

from dreamllm import DreamLLMForCausalLM, DreamLLMPipeline, DreamLLMProcessor
from dreamllm.pipelines import default_scheduler
from dreamllm.processing.tokenization_dreamllm import build_tiny_tokenizer
from dreamllm.testing import config_for_tokenizer

CONDITION_DIM = 256
NUM_DREAM_QUERIES = 64
PROMPT = "A photo of an astronaut riding a horse on the moon, digital art, highly detailed"
PROMPT_WORDS = PROMPT.replace(",", "").split()
"""Words the benchmark tokenizer holds whole: the prompt is one token per word or comma (18 with BOS), close to what the
released model's 32k-entry vocabulary gives; the tiny default vocabulary would cut it into 61 pieces."""


def build_pipeline(seed: int = 0) -> DreamLLMPipeline:
    """A random DreamLLM (Llama 256 wide, 4 layers; 256 image tokens), a 3-level UNet and a 4-level VAE (128 px)."""
    tokenizer = build_tiny_tokenizer(words=PROMPT_WORDS)
    config = config_for_tokenizer(
        tokenizer,
        text_config={"hidden_size": 256, "intermediate_size": 688, "num_hidden_layers": 4, "num_attention_heads": 4,
                     "num_key_value_heads": 4, "max_position_embeddings": 2048},
        vision_config={"hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2, "num_attention_heads": 2,
                       "image_size": 64, "patch_size": 4, "projection_dim": 64},
        num_dream_queries=NUM_DREAM_QUERIES, condition_dim=CONDITION_DIM,
    )
    processor = DreamLLMProcessor(
        image_processor=CLIPImageProcessorPil(size={"shortest_edge": 64}, crop_size={"height": 64, "width": 64}),
        tokenizer=tokenizer, num_image_tokens=config.num_image_tokens, num_dream_queries=NUM_DREAM_QUERIES,
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = DreamLLMForCausalLM(config).eval()
        unet = UNet2DConditionModel(
            sample_size=16, block_out_channels=(32, 64, 128), layers_per_block=1,
            down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
            up_block_types=("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
            cross_attention_dim=CONDITION_DIM, attention_head_dim=8, norm_num_groups=32,
        ).eval()
        vae = AutoencoderKL(
            block_out_channels=(32, 64, 64, 64), down_block_types=("DownEncoderBlock2D",) * 4,
            up_block_types=("UpDecoderBlock2D",) * 4, latent_channels=4, norm_num_groups=32, sample_size=128,
        ).eval()
    return DreamLLMPipeline(model=model, processor=processor, unet=unet, vae=vae, scheduler=default_scheduler())


def timed(function) -> float:
    start = time.perf_counter()
    function()
    return time.perf_counter() - start


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=50, help="denoising steps (text_to_image's default)")
    parser.add_argument("--repeats", type=int, default=15)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    dreamllm = build_pipeline()
    dreamllm.set_progress_bar_config(disable=True)
    stable_diffusion = StableDiffusionPipeline(
        vae=dreamllm.vae, text_encoder=None, tokenizer=None, unet=dreamllm.unet, scheduler=dreamllm.scheduler,
        safety_checker=None, feature_extractor=None, requires_safety_checker=False,
    )
    stable_diffusion.set_progress_bar_config(disable=True)
    shape = (1, NUM_DREAM_QUERIES, CONDITION_DIM)
    prompt_embeds, negative_prompt_embeds = torch.randn(shape), torch.randn(shape)

    def run_dreamllm():
        dreamllm.text_to_image(PROMPT, num_inference_steps=args.steps, generator=torch.Generator().manual_seed(0))

    def run_stable_diffusion():
        stable_diffusion(prompt_embeds=prompt_embeds, negative_prompt_embeds=negative_prompt_embeds,
                         num_inference_steps=args.steps, generator=torch.Generator().manual_seed(0))

    device = dreamllm.device

    def run_conditioning():
        with torch.no_grad():
            dreamllm.encode_prompt(PROMPT, device, 1, True)

    run_dreamllm(), run_stable_diffusion()  # warm-up
    times = {"dreamllm": [], "stable_diffusion": [], "conditioning": []}
    for _ in range(args.repeats):  # interleaved, so that load changes hit both alike
        times["dreamllm"].append(timed(run_dreamllm))
        times["stable_diffusion"].append(timed(run_stable_diffusion))
        times["conditioning"].append(timed(run_conditioning))

    height, width = dreamllm.default_image_size
    print(f"{height}x{width} images, {args.steps} DDPM steps, guidance 7.5, {args.threads} threads, "
          f"{args.repeats} interleaved repeats (median / min seconds)")
    for name, values in times.items():
        print(f"  {name:<17} {statistics.median(values):7.3f} / {min(values):7.3f}")
    paired = [ours / theirs for ours, theirs in zip(times["dreamllm"], times["stable_diffusion"])]
    print(f"ratio DreamLLM / Stable Diffusion: {statistics.median(paired):.3f}x (median of paired runs), "
          f"{min(times['dreamllm']) / min(times['stable_diffusion']):.3f}x (best runs)")
    share = statistics.median(times["conditioning"]) / statistics.median(times["stable_diffusion"])
    print(f"DreamLLM conditioning alone: {share:.1%} of a Stable Diffusion run")
    loop = [(ours - conditioning) / theirs
            for ours, theirs, conditioning in zip(times["dreamllm"], times["stable_diffusion"], times["conditioning"])]
    print(f"sampling loop without the conditioning: {statistics.median(loop):.3f}x (median of paired runs)")


if __name__ == "__main__":
    main()
