"""DreamLLM at the released size, end to end on this machine: conversion, loading, a UNet step, a VAE decode, decoding.

Builds a randomly initialised checkpoint in the original release layout with the released shapes (Vicuna-7B,
CLIP ViT-L/14, the Stable Diffusion 2.1-base UNet and VAE; about 16 GB in bf16) file by file, so that building it
needs about one language-model shard of memory (`--shard-size`, default 5GB). The tokenizer is the official-tiny
fixture's (its 608 tokens fit the 32008-row embeddings; decoding costs the same). Then it measures, each in a fresh
process:

- the conversion from safetensors language-model shards, and from `.bin` shards (time and peak memory growth);
- `DreamLLMPipeline.from_pretrained` of the converted folder in bf16;
- one 512 px UNet step with classifier-free guidance (the batch of unconditional and conditional rows, the guidance
  and the scheduler step);
- one VAE decode of a 512 px image;
- the time per decoded token of `generate` (greedy, after a 32-token prompt: the median time of `1 + --tokens`
  new tokens less that of one, over `--tokens`).

It is too slow for CI; run it by hand on an otherwise idle machine with about 24 GB of memory and 35 GB of disk:

    python benchmarks/bench_real_size.py [--work-dir DIR] [--layers 32] [--threads 2] [--repeats 3] [--tokens 16]

`--layers 2` (a 2-layer language model with every other part at full size) checks the script in a few minutes.
"""

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from math import prod
from pathlib import Path

import torch
from bench_conversion_memory import FIXTURE, measure
from safetensors.torch import save_file
from transformers.utils.hub import convert_file_size_to_int

from dreamllm.conversion.convert import empty_converted_pipeline, expected_shapes
from dreamllm.conversion.original import LANGUAGE_MODEL_RENAMES, OriginalCheckpoint, Rename
from dreamllm.conversion.weights import StoredTensor, pack_shards, shard_file_name

TOKENIZER_FILES = ("tokenizer.model", "tokenizer_config.json", "special_tokens_map.json", "added_tokens.json")
# The released 7B config.json (Vicuna-7B fields, plugins naming the public CLIP and Stable Diffusion repos), with the
# special-token ids of the fixture's tokenizer.
VICUNA_7B = {
    "vocab_size": 32008, "hidden_size": 4096, "intermediate_size": 11008, "num_hidden_layers": 32,
    "num_attention_heads": 32, "num_key_value_heads": 32, "hidden_act": "silu", "max_position_embeddings": 2048,
    "rms_norm_eps": 1e-06, "rope_theta": 10000.0, "tie_word_embeddings": False, "torch_dtype": "bfloat16",
}  # fmt: skip
UPSTREAM_NAMES = {
    "clip_vision_embedding": ("clip_vision_model_name_or_path", "openai/clip-vit-large-patch14"),
    "stable_diffusion_head": ("diffusion_name_or_path", "stabilityai/stable-diffusion-2-1-base"),
}
MEASURE_STEPS = "--measure-steps"


def write_config_and_tokenizer(folder: Path, layers: int):
    """The released config.json (with `layers` language-model layers) and the fixture's tokenizer files."""
    folder.mkdir(parents=True)
    source = FIXTURE / "checkpoint"
    for name in TOKENIZER_FILES:
        shutil.copy(source / name, folder / name)
    config = json.loads((source / "config.json").read_text()) | VICUNA_7B | {"num_hidden_layers": layers}
    for name, settings in config["plugins_init_kwargs"].items():
        settings["embed_hidden_size"] = VICUNA_7B["hidden_size"]
        if name in UPSTREAM_NAMES:
            setting, repo_id = UPSTREAM_NAMES[name]
            settings[setting] = repo_id
    (folder / "config.json").write_text(json.dumps(config, indent=2))


def original_tensors(renames: tuple[Rename, ...], shapes: dict[str, dict[str, tuple[int, ...]]]) -> list[StoredTensor]:
    """The bf16 tensors an original file holds: the converted tensors its renames produce, under their original names
    (with the leading batch dimension of size 1 where the original has one)."""
    return [
        StoredTensor(rename.source_key(key), torch.bfloat16, (1,) * rename.batch_dim + shape)
        for rename in renames
        for key, shape in shapes[rename.component].items()
        if key.startswith(rename.target_prefix)
    ]


def random_tensor(tensor: StoredTensor, generator: torch.Generator) -> torch.Tensor:
    """Weights of a plausible scale: matrices and kernels ~ N(0, 1/fan_in), vectors ones (norm weights) or zeros."""
    if len(tensor.shape) == 1:
        fill = torch.zeros if tensor.key.endswith("bias") else torch.ones
        return fill(tensor.shape, dtype=tensor.dtype)
    values = torch.empty(tensor.shape, dtype=tensor.dtype)
    return values.normal_(0, prod(tensor.shape[1:]) ** -0.5, generator=generator)


def random_state_dict(tensors: list[StoredTensor], generator: torch.Generator) -> dict[str, torch.Tensor]:
    return {tensor.key: random_tensor(tensor, generator) for tensor in tensors}


def write_plugins(checkpoint: OriginalCheckpoint, shapes: dict, generator: torch.Generator):
    """The three plugin files (`<plugin>.bin`), one at a time."""
    for source in checkpoint.plugin_sources():
        torch.save(random_state_dict(original_tensors(source.renames, shapes), generator), source.path)


def write_language_model(folder: Path, shapes: dict, layout: str, max_shard_bytes: int, seed: int):
    """The language model as indexed shards (`safetensors` or `bin`), one shard in memory at a time."""
    generator = torch.Generator().manual_seed(seed)
    stem, suffix = ("model", ".safetensors") if layout == "safetensors" else ("pytorch_model", ".bin")
    groups = pack_shards(original_tensors(LANGUAGE_MODEL_RENAMES, shapes), max_shard_bytes)
    weight_map = {}
    for index, group in enumerate(groups):
        name = shard_file_name(stem, index, len(groups), suffix)
        state_dict = random_state_dict(group, generator)
        if layout == "safetensors":
            save_file(state_dict, folder / name, metadata={"format": "pt"})
        else:
            torch.save(state_dict, folder / name)
        weight_map |= dict.fromkeys(state_dict, name)
        del state_dict
    (folder / f"{stem}{suffix}.index.json").write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))


def remove_language_model(folder: Path):
    for path in folder.glob("*"):
        if path.name.startswith(("model", "pytorch_model")):
            path.unlink()


def build_checkpoint(folder: Path, layers: int, max_shard_bytes: int) -> dict:
    """Writes the checkpoint with safetensors language-model shards; returns the converted shapes for later layouts."""
    write_config_and_tokenizer(folder, layers)
    checkpoint = OriginalCheckpoint(folder)
    shapes = expected_shapes(empty_converted_pipeline(checkpoint, None, None))
    write_plugins(checkpoint, shapes, torch.Generator().manual_seed(0))
    write_language_model(folder, shapes, "safetensors", max_shard_bytes, seed=1)
    return shapes


def folder_bytes(folder: Path) -> int:
    return sum(path.stat().st_size for path in folder.rglob("*") if path.is_file())


def timed(function, repeats: int) -> float:
    """The median time of `repeats` calls of `function`, after one untimed warm-up call."""
    function()
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        function()
        times.append(time.perf_counter() - started)
    return statistics.median(times)


@torch.inference_mode()
def measure_steps(converted: Path, repeats: int, tokens: int) -> dict:
    """Load time, a guided 512 px UNet step, a VAE decode and the time per decoded token (seconds)."""
    from dreamllm import DreamLLMPipeline

    started = time.perf_counter()
    pipe = DreamLLMPipeline.from_pretrained(converted, dtype=torch.bfloat16)
    load_seconds = time.perf_counter() - started
    generator = torch.Generator().manual_seed(0)
    unet, vae, scheduler, model = pipe.unet, pipe.vae, pipe.scheduler, pipe.model
    size = unet.config.sample_size
    latents = torch.randn((1, unet.config.in_channels, size, size), generator=generator, dtype=torch.bfloat16)
    conditions = torch.randn(
        (2, model.config.num_dream_queries, unet.config.cross_attention_dim), generator=generator, dtype=torch.bfloat16
    )
    scheduler.set_timesteps(50)
    timestep = scheduler.timesteps[0]

    def unet_step():
        noise = unet(torch.cat([latents] * 2), timestep, encoder_hidden_states=conditions).sample
        unconditional, conditional = noise.chunk(2)
        guided = unconditional + 7.5 * (conditional - unconditional)
        return scheduler.step(guided, timestep, latents).prev_sample

    def vae_decode():
        return vae.decode(latents / vae.config.scaling_factor).sample

    prompt = torch.randint(3, 600, (1, 32), generator=generator)

    def decode(new_tokens: int):
        return model.generate(prompt, max_new_tokens=new_tokens, min_new_tokens=new_tokens, do_sample=False)

    prefill = timed(lambda: decode(1), repeats)
    with_tokens = timed(lambda: decode(1 + tokens), repeats)
    return {
        "load_s": load_seconds,
        "image_px": size * vae_scale_factor(vae),
        "unet_step_s": timed(unet_step, repeats),
        "vae_decode_s": timed(vae_decode, repeats),
        "decode_token_s": (with_tokens - prefill) / tokens,
    }


def vae_scale_factor(vae) -> int:
    return 2 ** (len(vae.config.block_out_channels) - 1)


def run_steps(converted: Path, threads: int, repeats: int, tokens: int) -> dict:
    """`measure_steps` in a fresh process (so the memory of building the checkpoint is not counted)."""
    command = [sys.executable, __file__, MEASURE_STEPS, str(converted), "--threads", str(threads),
               "--repeats", str(repeats), "--tokens", str(tokens)]  # fmt: skip
    result = subprocess.run(command, capture_output=True, text=True, check=True)
    return json.loads(result.stdout.strip().splitlines()[-1])


def report_conversion(label: str, checkpoint: Path, result: dict):
    growth = (result["peak_kib"] - result["baseline_kib"]) / 2**20
    print(f"conversion from {label}: {result['seconds']:.1f} s, peak memory +{growth:.2f} GiB "
          f"(input {folder_bytes(checkpoint) / 2**30:.1f} GiB)", flush=True)  # fmt: skip


def parse_arguments() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work-dir", type=Path, help="Scratch folder (default: a temporary one, removed at the end).")
    parser.add_argument("--layers", type=int, default=32, help="Language-model layers (32 is the released size).")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=3, help="Timed repeats of each step (after one warm-up).")
    parser.add_argument("--tokens", type=int, default=16, help="Decoded tokens timed.")
    parser.add_argument("--shard-size", default="5GB", help="Language-model shard size of the original checkpoint.")
    parser.add_argument(MEASURE_STEPS, type=Path, help=argparse.SUPPRESS)
    return parser.parse_args()


def main():
    args = parse_arguments()
    torch.set_num_threads(args.threads)
    if args.measure_steps:
        print(json.dumps(measure_steps(args.measure_steps, args.repeats, args.tokens)))
        return
    os.environ["OMP_NUM_THREADS"] = str(args.threads)
    work = args.work_dir or Path(tempfile.mkdtemp(prefix="dreamllm-real-size-"))
    checkpoint, converted = work / "original", work / "converted"
    max_shard_bytes = convert_file_size_to_int(args.shard_size)
    try:
        started = time.perf_counter()
        shapes = build_checkpoint(checkpoint, args.layers, max_shard_bytes)
        print(f"built {folder_bytes(checkpoint) / 2**30:.1f} GiB original checkpoint ({args.layers} layers) "
              f"in {time.perf_counter() - started:.0f} s", flush=True)  # fmt: skip
        report_conversion("safetensors", checkpoint, measure(checkpoint, converted, "auto", "5GB"))
        steps = run_steps(converted, args.threads, args.repeats, args.tokens)
        print(f"load (bf16): {steps['load_s']:.1f} s", flush=True)
        print(f"{steps['image_px']} px UNet step with guidance: {steps['unet_step_s']:.2f} s", flush=True)
        print(f"VAE decode ({steps['image_px']} px): {steps['vae_decode_s']:.2f} s", flush=True)
        print(f"decode: {steps['decode_token_s']:.3f} s per token ({args.threads} threads)", flush=True)
        shutil.rmtree(converted)
        remove_language_model(checkpoint)
        write_language_model(checkpoint, shapes, "bin", max_shard_bytes, seed=1)
        report_conversion(".bin", checkpoint, measure(checkpoint, converted, "auto", "5GB"))
    finally:
        if args.work_dir is None:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
