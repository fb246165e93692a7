"""Text decoding with a static KV cache and `torch.compile` (fullgraph) against eager decoding with the dynamic cache,
for `DreamLLMForCausalLM` and for `LlamaForCausalLM` with the same weights and generation settings, one process.

transformers compiles only the one-token decode steps (`generation_config.compile_config`; the prefill runs eager).
The first compiled call of each model is the warm-up and is not timed. Prints tokens/s, the speed-up of compiling
for each model, and the ratios ours/Llama.

    python benchmarks/bench_compile.py [--layers 4] [--hidden 512] [--new-tokens 64] [--repeats 5]
"""

import argparse
import copy
import time

import torch
from bench_language_model import build_models, interleave
from transformers import CompileConfig


def compiled_decoding_config() -> CompileConfig:
    """A fullgraph compile config that transformers also applies on CPU (by default it compiles only on accelerators)."""
    compile_config = CompileConfig(fullgraph=True)
    compile_config._compile_all_devices = True
    return compile_config


@torch.inference_mode()
def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--hidden", type=int, default=512)
    parser.add_argument("--prompt-tokens", type=int, default=32)
    parser.add_argument("--new-tokens", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    ours, llama, _ = build_models(args.layers, args.hidden)
    print(f"language model: {sum(p.numel() for p in llama.parameters()) / 1e6:.0f}M parameters, "
          f"{args.layers} layers, hidden {args.hidden}; threads {args.threads}")

    prompt = torch.randint(3, 32000, (1, args.prompt_tokens), generator=torch.Generator().manual_seed(0))
    eager = copy.deepcopy(ours.generation_config)
    eager.update(max_new_tokens=args.new_tokens, min_new_tokens=args.new_tokens, do_sample=False)
    compiled = copy.deepcopy(eager)
    compiled.update(cache_implementation="static", compile_config=compiled_decoding_config())
    runs = {
        f"{name} {mode}": (lambda model=model, config=config: model.generate(prompt, generation_config=config))
        for name, model in (("dreamllm", ours), ("llama", llama))
        for mode, config in (("eager", eager), ("compiled", compiled))
    }
    start = time.perf_counter()
    tokens = {name: run() for name, run in runs.items()}  # compiles each model's decode step once
    print(f"warm-up (two compilations): {time.perf_counter() - start:.0f} s")
    reference = tokens["llama eager"]
    assert all(torch.equal(ids, reference) for ids in tokens.values()), "every run must decode the same tokens"
    speeds = {name: args.new_tokens / seconds for name, seconds in interleave(runs, args.repeats).items()}
    for name, speed in speeds.items():
        print(f"{name}: {speed:.1f} tok/s")
    for name in ("dreamllm", "llama"):
        print(f"{name} compiled / eager: {speeds[f'{name} compiled'] / speeds[f'{name} eager']:.3f}x")
    for mode in ("eager", "compiled"):
        print(f"{mode} dreamllm / llama: {speeds[f'dreamllm {mode}'] / speeds[f'llama {mode}']:.3f}x")


if __name__ == "__main__":
    main()
