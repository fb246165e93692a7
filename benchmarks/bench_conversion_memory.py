"""Peak memory of `dreamllm convert` against the size of its largest input file.

Writes an original-layout DreamLLM checkpoint of about 1 GB (a random mid-size Llama in bf16, or 2 GB in float32,
the official-tiny fixture's plugins and tokenizer), converts it in a fresh subprocess per case and reads that
process's peak resident memory (`VmHWM` of /proc/self/status; `ru_maxrss` would carry over the parent's peak across
fork and exec): once after the imports (the baseline) and once after the conversion.

    python benchmarks/bench_conversion_memory.py [--work-dir DIR] [--hidden 2048] [--layers 8]

Cases: the main weights as one `model.safetensors`, one `pytorch_model.bin` or two safetensors shards; each `--dtype`
(kept, cast up to float32, cast down to bfloat16) with 5GB, 512MB and 100MB output shards. Each line prints the peak
growth against the largest input file and against the target (1.2x the largest input file plus the largest output
shard), and the peak growth and time against transformers doing the same to the language model alone
(`LlamaForCausalLM.from_pretrained(dtype=...).save_pretrained(max_shard_size=...)`, also in a fresh process).
"""

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import torch
from safetensors.torch import save_file
from transformers import LlamaConfig

FIXTURE = Path(
    os.environ.get(
        "DREAMLLM_OFFICIAL_TINY", Path(__file__).resolve().parents[2] / "shared" / "fixtures" / "official-tiny"
    )
)
VOCAB_SIZE = 32008

# Run in a fresh process with the arguments input, output, dtype, max shard size; `{imports}` and `{convert}` are
# ours or the transformers equivalent (load the Llama, save it cast and sharded).
MEASURE = """
import json, re, sys, time
{imports}
def peak_kib():
    return int(re.search(r"VmHWM:\\s+(\\d+) kB", open("/proc/self/status").read())[1])
baseline = peak_kib()
started = time.perf_counter()
{convert}
seconds = time.perf_counter() - started
print(json.dumps({{"baseline_kib": baseline, "peak_kib": peak_kib(), "seconds": seconds}}))
"""
CONVERTERS = {
    "dreamllm": (
        "from dreamllm.conversion import convert_original_checkpoint",
        "convert_original_checkpoint(sys.argv[1], sys.argv[2], dtype=sys.argv[3], max_shard_size=sys.argv[4])",
    ),
    "transformers": (
        "from transformers import LlamaForCausalLM",
        "LlamaForCausalLM.from_pretrained(sys.argv[1], dtype=sys.argv[3]).save_pretrained(sys.argv[2], "
        "max_shard_size=sys.argv[4])",
    ),
}


def llama_state_dict(hidden: int, layers: int, dtype: torch.dtype) -> dict[str, torch.Tensor]:
    """Random Llama weights with the original's key names (including the rotary `inv_freq` buffers)."""
    intermediate = hidden * 11 // 4
    generator = torch.Generator().manual_seed(0)
    shapes = {
        "model.embed_tokens.weight": (VOCAB_SIZE, hidden),
        "model.norm.weight": (hidden,),
        "lm_head.weight": (VOCAB_SIZE, hidden),
    }
    for layer in range(layers):
        prefix = f"model.layers.{layer}."
        shapes |= {prefix + f"self_attn.{name}_proj.weight": (hidden, hidden) for name in "qkvo"}
        shapes |= {
            prefix + "mlp.gate_proj.weight": (intermediate, hidden),
            prefix + "mlp.up_proj.weight": (intermediate, hidden),
        }
        shapes |= {
            prefix + "mlp.down_proj.weight": (hidden, intermediate),
            prefix + "self_attn.rotary_emb.inv_freq": (64,),
        }
        shapes |= {prefix + "input_layernorm.weight": (hidden,), prefix + "post_attention_layernorm.weight": (hidden,)}
    return {key: torch.randn(shape, generator=generator, dtype=dtype) * 0.02 for key, shape in shapes.items()}


def write_checkpoint(folder: Path, hidden: int, layers: int, main_weights: str, dtype: torch.dtype):
    """An original-layout checkpoint: the fixture's config, tokenizer and plugins resized to `hidden`, a big LLM."""
    source = FIXTURE / "checkpoint"
    folder.mkdir(parents=True)
    for name in ("tokenizer.model", "tokenizer_config.json", "special_tokens_map.json", "added_tokens.json"):
        shutil.copy(source / name, folder / name)
    config = json.loads((source / "config.json").read_text())
    config |= {"hidden_size": hidden, "intermediate_size": hidden * 11 // 4, "num_hidden_layers": layers,
               "num_attention_heads": hidden // 128, "num_key_value_heads": hidden // 128, "vocab_size": VOCAB_SIZE,
               "torch_dtype": "bfloat16"}  # fmt: skip
    plugins = config["plugins_init_kwargs"]
    for settings in plugins.values():
        settings["embed_hidden_size"] = hidden
    plugins["clip_vision_embedding"]["clip_vision_model_name_or_path"] = str(FIXTURE / "upstream" / "clip-vit-tiny")
    plugins["stable_diffusion_head"]["diffusion_name_or_path"] = str(FIXTURE / "upstream" / "sd-tiny")
    (folder / "config.json").write_text(json.dumps(config, indent=2))
    bf16 = lambda state: {key: value.to(torch.bfloat16) for key, value in state.items()}  # noqa: E731
    clip = bf16(torch.load(source / "clip_vision_embedding.bin", weights_only=True))
    clip |= {"projector.projector.weight": torch.zeros(hidden, 32, dtype=torch.bfloat16),
             "projector.projector.bias": torch.zeros(hidden, dtype=torch.bfloat16)}  # fmt: skip
    torch.save(clip, folder / "clip_vision_embedding.bin")
    torch.save({"dream_queries": torch.zeros(1, 64, hidden, dtype=torch.bfloat16)}, folder / "dream_embedding.bin")
    head = bf16(torch.load(source / "stable_diffusion_head.bin", weights_only=True))
    head["projector.projector.weight"] = torch.zeros(32, hidden, dtype=torch.bfloat16)
    torch.save(head, folder / "stable_diffusion_head.bin")
    write_main_weights(folder, llama_state_dict(hidden, layers, dtype), main_weights)


def write_main_weights(folder: Path, state: dict[str, torch.Tensor], layout: str):
    if layout == "pytorch_model.bin":
        torch.save(state, folder / layout)
        return
    if layout == "model.safetensors":
        save_file(state, folder / layout, metadata={"format": "pt"})
        return
    keys = list(state)
    shards = {
        "model-00001-of-00002.safetensors": keys[: len(keys) // 2],
        "model-00002-of-00002.safetensors": keys[len(keys) // 2 :],
    }
    for name, shard_keys in shards.items():
        save_file({key: state[key] for key in shard_keys}, folder / name, metadata={"format": "pt"})
    index = {"metadata": {}, "weight_map": {key: name for name, shard_keys in shards.items() for key in shard_keys}}
    (folder / "model.safetensors.index.json").write_text(json.dumps(index))


def measure(checkpoint: Path, output: Path, dtype: str, max_shard_size: str, converter: str = "dreamllm") -> dict:
    """Converts in a fresh Python process and returns its baseline and peak RSS (KiB) and the conversion time; the
    files written before are flushed to disk first, so that the conversion is not slowed by their writeback."""
    os.sync()
    imports, convert = CONVERTERS[converter]
    script = MEASURE.format(imports=imports, convert=convert)
    command = [sys.executable, "-c", script, str(checkpoint), str(output), dtype, max_shard_size]
    result = subprocess.run(command, capture_output=True, text=True, check=True)
    return json.loads(result.stdout.strip().splitlines()[-1])


def llama_folder(checkpoint: Path, folder: Path) -> Path:
    """The checkpoint's language model as a transformers Llama folder: its config, links to its weight files."""
    if not folder.exists():
        folder.mkdir()
        original = json.loads((checkpoint / "config.json").read_text())
        config = {key: value for key, value in original.items() if key in LlamaConfig().to_dict()}
        LlamaConfig(**config).save_pretrained(folder)
        for path in checkpoint.glob("*"):
            if path.name.startswith(("model", "pytorch_model")):
                (folder / path.name).symlink_to(path)
    return folder


def largest_file(folder: Path) -> int:
    """The size in bytes of the largest file under `folder`."""
    return max(path.stat().st_size for path in folder.rglob("*") if path.is_file())


CASES = [
    ("model.safetensors", "bfloat16", "auto", "5GB"), ("model.safetensors", "bfloat16", "float32", "5GB"),
    ("model.safetensors", "bfloat16", "float32", "512MB"), ("model.safetensors", "bfloat16", "float32", "100MB"),
    ("pytorch_model.bin", "bfloat16", "auto", "5GB"), ("pytorch_model.bin", "bfloat16", "float32", "5GB"),
    ("pytorch_model.bin", "bfloat16", "float32", "512MB"), ("sharded", "bfloat16", "auto", "5GB"),
    ("sharded", "bfloat16", "float32", "100MB"), ("model.safetensors", "float32", "bfloat16", "5GB"),
    ("model.safetensors", "float32", "bfloat16", "512MB"), ("pytorch_model.bin", "float32", "bfloat16", "100MB"),
]  # fmt: skip


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work-dir", type=Path, help="Scratch folder (default: a temporary one, removed at the end).")
    parser.add_argument("--hidden", type=int, default=2048)
    parser.add_argument("--layers", type=int, default=8)
    args = parser.parse_args()
    work = args.work_dir or Path(tempfile.mkdtemp(prefix="dreamllm-bench-"))
    print(
        f"{'main weights':18s} {'stored':8s} {'--dtype':8s} {'shards':>6s} {'largest in':>10s} {'largest out':>11s} "
        f"{'peak-base':>9s} {'/largest in':>11s} {'/target':>8s} {'time':>6s} {'transformers':>12s} {'time':>6s} "
        f"{'peak ratio':>10s} {'time ratio':>10s}"
    )
    try:
        for layout, stored, dtype, max_shard_size in CASES:
            checkpoint = work / f"original-{layout}-{stored}"
            output = work / f"converted-{layout}-{stored}-{dtype}-{max_shard_size}"
            if not checkpoint.exists():
                write_checkpoint(checkpoint, args.hidden, args.layers, layout, getattr(torch, stored))
            ours = measure(checkpoint, output, dtype, max_shard_size)
            largest_input, largest_output = largest_file(checkpoint), largest_file(output)
            shutil.rmtree(output)
            theirs = measure(llama_folder(checkpoint, work / f"llama-{layout}-{stored}"), output, dtype, max_shard_size,
                             "transformers")  # fmt: skip
            shutil.rmtree(output)
            growth, their_growth = ((r["peak_kib"] - r["baseline_kib"]) * 1024 for r in (ours, theirs))
            target = 1.2 * largest_input + largest_output
            print(
                f"{layout:18s} {stored:8s} {dtype:8s} {max_shard_size:>6s} {largest_input / 2**20:9.0f}M "
                f"{largest_output / 2**20:10.0f}M {growth / 2**20:8.0f}M {growth / largest_input:10.2f}x "
                f"{growth / target:7.2f}x {ours['seconds']:5.1f}s {their_growth / 2**20:11.0f}M "
                f"{theirs['seconds']:5.1f}s {growth / their_growth:9.3f}x {ours['seconds'] / theirs['seconds']:9.2f}x",
                flush=True,
            )
    finally:
        if args.work_dir is None:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
