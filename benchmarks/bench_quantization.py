"""Memory and toy accuracy of the built-in DreamLLM with its `model` component quantized on the CPU.

    cd benchmarks && python bench_quantization.py [--steps 20]

For each quantization (none, optimum-quanto int8 / int4, torchao int8 weight-only), prints the bytes the `model`
component's weights take (quantized tensors counted by their integer data and scales), the ratio to float32, the
creation accuracy of benchmarks/evaluate_toy_model.py (36 captions: 2 for each of the 18 (colour, shape) pairs), and
the time it took. Run from benchmarks/.
"""

import argparse
import time

import torch
from evaluate_toy_model import creation
from transformers import QuantoConfig, TorchAoConfig

from dreamllm import DreamLLMPipeline


def tensor_bytes(tensor: torch.Tensor) -> int:
    """Storage of a tensor; a tensor subclass (quantized weight) counts the tensors it is made of."""
    if hasattr(tensor, "__tensor_flatten__"):
        names, _ = tensor.__tensor_flatten__()
        return sum(tensor_bytes(getattr(tensor, name)) for name in names)
    return tensor.numel() * tensor.element_size()


def weights_bytes(module: torch.nn.Module) -> int:
    return sum(tensor_bytes(tensor) for tensor in [*module.parameters(), *module.buffers()])


def configurations() -> dict:
    from torchao.quantization import Int8WeightOnlyConfig

    return {
        "float32": None,
        "quanto int8": QuantoConfig(weights="int8"),
        "quanto int4": QuantoConfig(weights="int4"),
        "torchao int8": TorchAoConfig(Int8WeightOnlyConfig()),
    }


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--guidance", type=float, default=7.5)
    args = parser.parse_args()
    baseline = None
    print(f"{'quantization':<14} {'model MB':>9} {'vs fp32':>8} {'toy pictures':>13} {'seconds':>8}")
    for name, config in configurations().items():
        start = time.perf_counter()
        pipe = DreamLLMPipeline.from_pretrained(quantization_config=config)
        pipe.set_progress_bar_config(disable=True)
        correct, total, _ = creation(pipe, args)
        size = weights_bytes(pipe.model)
        baseline = baseline or size
        print(f"{name:<14} {size / 1e6:>9.2f} {size / baseline:>7.2f}x {correct:>6}/{total:<6} "
              f"{time.perf_counter() - start:>8.1f}")


if __name__ == "__main__":
    main()
