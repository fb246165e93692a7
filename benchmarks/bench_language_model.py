"""DreamLLM's language path against the transformers classes it builds on, same weights and sizes, one process.

1. Text decoding: `DreamLLMForCausalLM.generate` vs `LlamaForCausalLM.generate` (greedy, KV cache), tokens/s.
2. Prefill with one image: a DreamLLM forward over text + one image block vs `LlavaForConditionalGeneration` with the
   same vision tower, an equivalent projector (linear_1 = ours, identity activation, linear_2 = identity) and the same
   language model, on sequences of the same length.

Prints the times and the ratios ours/reference (throughput ratios: >= 0.97 is the target).

    python benchmarks/bench_language_model.py [--layers 8] [--hidden 768] [--new-tokens 64] [--repeats 5]
"""

import argparse
import copy
import statistics
import time

import torch
from transformers import LlamaForCausalLM, LlavaConfig, LlavaForConditionalGeneration

from dreamllm import DreamLLMConfig, DreamLLMForCausalLM


def build_models(layers: int, hidden: int) -> tuple[DreamLLMForCausalLM, LlamaForCausalLM, LlavaForConditionalGeneration]:
    text_config = {
        "vocab_size": 32008, "hidden_size": hidden, "intermediate_size": hidden * 8 // 3, "num_hidden_layers": layers,
        "num_attention_heads": hidden // 64, "max_position_embeddings": 2048,
    }
    vision_config = {
        "hidden_size": 384, "intermediate_size": 1536, "num_hidden_layers": 6, "num_attention_heads": 6,
        "image_size": 224, "patch_size": 14,
    }
    torch.manual_seed(0)
    ours = DreamLLMForCausalLM(DreamLLMConfig(text_config=text_config, vision_config=vision_config)).eval()
    llama = LlamaForCausalLM(ours.config.text_config).eval()
    llama.model.load_state_dict(ours.model.language_model.state_dict())
    llama.lm_head.load_state_dict(ours.lm_head.state_dict())
    llava_config = LlavaConfig(
        text_config=ours.config.text_config.to_dict(), vision_config=ours.config.vision_config.to_dict(),
        image_token_id=ours.config.image_patch_token_id, projector_hidden_act="linear", image_seq_length=256,
    )
    llava = LlavaForConditionalGeneration(llava_config).eval()
    llava.model.vision_tower.load_state_dict(ours.model.vision_tower.state_dict())
    llava.model.language_model.load_state_dict(ours.model.language_model.state_dict())
    llava.lm_head.load_state_dict(ours.lm_head.state_dict())
    projector = llava.model.multi_modal_projector
    projector.linear_1.load_state_dict(ours.model.vision_projector.state_dict())
    projector.linear_2.weight.data.copy_(torch.eye(hidden))
    projector.linear_2.bias.data.zero_()
    return ours, llama, llava


def interleave(functions: dict, repeats: int) -> dict:
    """Median time of each function, measured round-robin so that machine noise hits all of them alike."""
    timings = {name: [] for name in functions}
    for function in functions.values():
        function()
    for _ in range(repeats):
        for name, function in functions.items():
            start = time.perf_counter()
            function()
            timings[name].append(time.perf_counter() - start)
    return {name: statistics.median(values) for name, values in timings.items()}


@torch.inference_mode()
def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--layers", type=int, default=8)
    parser.add_argument("--hidden", type=int, default=768)
    parser.add_argument("--prompt-tokens", type=int, default=32)
    parser.add_argument("--new-tokens", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    ours, llama, llava = build_models(args.layers, args.hidden)
    print(f"language model: {sum(p.numel() for p in llama.parameters()) / 1e6:.0f}M parameters, "
          f"{args.layers} layers, hidden {args.hidden}; threads {args.threads}")

    prompt = torch.randint(3, 32000, (1, args.prompt_tokens), generator=torch.Generator().manual_seed(0))
    settings = copy.deepcopy(ours.generation_config)  # Llama gets ours: suppressed block tokens, both eos ids
    settings.update(max_new_tokens=args.new_tokens, min_new_tokens=args.new_tokens, do_sample=False)
    decode = {"dreamllm": lambda: ours.generate(prompt, generation_config=settings),
              "llama": lambda: llama.generate(prompt, generation_config=settings)}
    assert torch.equal(decode["dreamllm"](), decode["llama"]()), "the two models must decode the same tokens"
    decode_times = interleave(decode, args.repeats)
    speeds = {name: args.new_tokens / seconds for name, seconds in decode_times.items()}
    print(f"text decode ({args.prompt_tokens} prompt + {args.new_tokens} new tokens): "
          f"dreamllm {speeds['dreamllm']:.1f} tok/s, LlamaForCausalLM {speeds['llama']:.1f} tok/s, "
          f"ratio {speeds['dreamllm'] / speeds['llama']:.3f}x")

    config = ours.config
    pixel_values = torch.randn(1, 3, 224, 224, generator=torch.Generator().manual_seed(1))
    text = prompt[0, : args.prompt_tokens].tolist()
    our_ids = torch.tensor([text + [config.image_start_token_id] + [config.image_patch_token_id] * 256
                            + [config.image_end_token_id] + text])
    llava_ids = torch.tensor([text + [5] + [config.image_patch_token_id] * 256 + [6] + text])
    prefill = {"dreamllm": lambda: ours(input_ids=our_ids, pixel_values=pixel_values, logits_to_keep=1),
               "llava": lambda: llava(input_ids=llava_ids, pixel_values=pixel_values, logits_to_keep=1)}
    image_slice = slice(args.prompt_tokens + 1, args.prompt_tokens + 257)
    same_features = torch.allclose(
        ours.model.embed_multimodal_inputs(our_ids, pixel_values)[0][:, image_slice],
        llava.model.get_image_features(pixel_values).pooler_output[0], atol=1e-5)
    prefill_times = interleave(prefill, args.repeats)
    print(f"prefill with one image ({our_ids.shape[1]} positions): dreamllm {prefill_times['dreamllm'] * 1000:.0f} ms, "
          f"LlavaForConditionalGeneration {prefill_times['llava'] * 1000:.0f} ms, "
          f"throughput ratio {prefill_times['llava'] / prefill_times['dreamllm']:.3f}x (same image features: {same_features})")


if __name__ == "__main__":
    main()
