"""`dreamllm convert`: an original DreamLLM release, or Llama + CLIP + Stable Diffusion parts, into one folder.

dreamllm convert --input ORIGINAL_DIR --output OUTPUT_DIR [--dtype auto|float32|bfloat16] [--push-to-hub REPO_ID]
dreamllm convert --from-components --llm DIR --vision DIR --diffusion DIR --output OUTPUT_DIR
"""

import argparse
import time

from .components import build_from_components
from .convert import DTYPE_CHOICES, convert_original_checkpoint

EXAMPLES = """examples:
  dreamllm convert --input ./DreamLLM-7B --output ./dreamllm-7b --dtype bfloat16
  dreamllm convert --input ./DreamLLM-7B --output ./dreamllm-7b --push-to-hub my-name/dreamllm-7b
  dreamllm convert --from-components --llm ./vicuna-7b --vision ./clip-vit-l-14 --diffusion ./sd-2-1-base --output ./new
"""


def add_arguments(parser: argparse.ArgumentParser):
    """Adds the options of `dreamllm convert` to `parser`."""
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    parser.epilog = EXAMPLES
    parser.add_argument("--input", metavar="DIR", help="Original DreamLLM release (config.json, weights, plugin .bin).")
    parser.add_argument("--output", metavar="DIR", required=True, help="Folder to write, once complete.")
    parser.add_argument("--dtype", choices=list(DTYPE_CHOICES), default="auto", help="auto keeps the stored dtype.")
    parser.add_argument("--force", action="store_true", help="Replace an existing model at --output.")
    parser.add_argument("--push-to-hub", metavar="REPO_ID", help="Upload the result and a model card to this Hub model repo.")
    parser.add_argument("--license", help="The license the uploaded card declares (e.g. llama2, apache-2.0); by default the source's.")
    parser.add_argument(
        "--vision-config",
        metavar="DIR",
        help="CLIP folder (config.json, preprocessor_config.json) to use instead of the checkpoint's.",
    )
    parser.add_argument(
        "--diffusion-config",
        metavar="DIR",
        help="Stable Diffusion folder (unet/, vae/, scheduler/ configs) to use instead of the checkpoint's.",
    )
    parser.add_argument("--max-shard-size", default="5GB", help="Largest weights file written (default 5GB).")
    parts = parser.add_argument_group("building an untrained DreamLLM from parts")
    parts.add_argument("--from-components", action="store_true", help="Build from --llm, --vision and --diffusion.")
    parts.add_argument("--llm", metavar="DIR", help="Llama/Vicuna checkpoint with its tokenizer.")
    parts.add_argument("--vision", metavar="DIR", help="CLIP checkpoint with its preprocessor_config.json.")
    parts.add_argument("--diffusion", metavar="DIR", help="Stable Diffusion 2.x folder (unet/, vae/, scheduler/).")
    parts.add_argument("--num-dream-queries", type=int, default=64, help="Dream queries of the new model (64).")
    parts.add_argument("--seed", type=int, default=0, help="Seed of the newly initialized weights.")


def check_mode(args: argparse.Namespace):
    """Raises a `ValueError` when the options mix the two modes or one of them lacks a folder."""
    component_options = {"--llm": args.llm, "--vision": args.vision, "--diffusion": args.diffusion}
    if args.from_components:
        missing = [flag for flag, value in component_options.items() if not value]
        if missing or args.input:
            raise ValueError(f"--from-components needs {', '.join(component_options)} and no --input")
    elif not args.input or any(component_options.values()):
        raise ValueError("pass --input ORIGINAL_DIR, or --from-components with --llm, --vision and --diffusion")


def run(args: argparse.Namespace) -> int:
    """Runs `dreamllm convert`; returns the exit status."""
    check_mode(args)
    started = time.perf_counter()
    if args.from_components:
        output = build_from_components(
            args.llm, args.vision, args.diffusion, args.output, num_dream_queries=args.num_dream_queries,
            dtype=args.dtype, seed=args.seed, force=args.force, max_shard_size=args.max_shard_size,
            push_to_hub=args.push_to_hub, license=args.license,
        )  # fmt: skip
    else:
        output = convert_original_checkpoint(
            args.input, args.output, dtype=args.dtype, vision_config=args.vision_config,
            diffusion_config=args.diffusion_config, force=args.force, max_shard_size=args.max_shard_size,
            push_to_hub=args.push_to_hub, license=args.license,
        )  # fmt: skip
    print(f"Wrote {output} in {time.perf_counter() - started:.1f} s")
    return 0
