"""The measured figures that model cards quote, as the README's "Numerical parity" and "Performance" sections give
them (a test keeps both the same): parity with the original implementation, and speed against the closest
transformers and diffusers classes."""

PARITY_SETUP = (
    "outputs of the original implementation (transformers 4.35.2, diffusers 0.24.0) on a tiny checkpoint in the "
    "original release format, compared after conversion in float32 on CPU with eager attention by "
    "`tests/test_official_parity.py`"
)
PARITY = (
    ("text-only logits and all hidden states", "3.1e-6"),
    ("CLIP features (projected)", "7.2e-7"),
    ("multimodal logits, single row and batch", "3.3e-6"),
    ("dream conditions: prompt, unconditional, negative prompt", "1.9e-6"),
    ("dream conditions, left-padded batch", "2.7e-6"),
    ("greedy generation with an image", "ids identical; step scores 2.1e-6"),
    ("text-to-image with negative prompt: latents at every step", "3.4e-5; uint8 images differ by at most 1"),
    ("batched text-to-image, long row", "latents 3.0e-5; image 1.2e-6"),
)
SPEED = (
    ("text-to-image time relative to diffusers `StableDiffusionPipeline` (same UNet, VAE and scheduler, 50 steps, "
     "three runs)", "1.023×, 1.020× and 1.021×"),
    ("greedy text decoding throughput relative to transformers `LlamaForCausalLM` (two runs, > 1 is faster)",
     "1.012× and 1.006×"),
    ("language-model positions added per image of an interleaved document", "+323"),
    ("memory growth converting a ~1 GB checkpoint, any `--dtype`", "21–57 MB"),
)
SPEED_SETUP = "the scripts in `benchmarks/`, run on a 2-core CPU with small random models"


def table_row(*cells: str) -> str:
    """One row of a Markdown table."""
    return f"| {' | '.join(cells)} |"


__all__ = ["PARITY", "PARITY_SETUP", "SPEED", "SPEED_SETUP", "table_row"]
