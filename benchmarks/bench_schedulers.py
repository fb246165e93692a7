"""Time and toy accuracy of the built-in DreamLLM per diffusers scheduler and step count.

    cd benchmarks && python bench_schedulers.py

For each (scheduler, steps), runs the creation part of evaluate_toy_model.py (36 captions, 2 for each (colour, shape)
pair, the same seeds, guidance 7.5) and prints how many pictures the toy world's analyzer judges right, and the
seconds the batch took.
"""

import time
from types import SimpleNamespace

from diffusers import (
    DDIMScheduler,
    DDPMScheduler,
    DPMSolverMultistepScheduler,
    EulerDiscreteScheduler,
    UniPCMultistepScheduler,
)

from evaluate_toy_model import creation

from dreamllm import DreamLLMPipeline

GUIDANCE = 7.5
SETTINGS = [
    (DDPMScheduler, 50), (DDPMScheduler, 20), (DDIMScheduler, 20), (DPMSolverMultistepScheduler, 20),
    (DPMSolverMultistepScheduler, 10), (EulerDiscreteScheduler, 20), (UniPCMultistepScheduler, 10),
]


def main():
    pipe = DreamLLMPipeline.from_pretrained()
    pipe.set_progress_bar_config(disable=True)
    default = pipe.scheduler
    print(f"{'scheduler':<30} {'steps':>5} {'toy pictures':>13} {'seconds':>8}")
    for scheduler_class, steps in SETTINGS:
        pipe.scheduler = scheduler_class.from_config(default.config)
        start = time.perf_counter()
        correct, total, _ = creation(pipe, SimpleNamespace(steps=steps, guidance=GUIDANCE))
        print(f"{scheduler_class.__name__:<30} {steps:>5} {correct:>6}/{total:<6} {time.perf_counter() - start:>8.1f}")


if __name__ == "__main__":
    main()
