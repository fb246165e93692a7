"""`dreamllm evaluate TASK --model DIR_OR_REPO --data PATH`: one benchmark, sharded under `accelerate launch`."""

import argparse
import json

from .presets import PRESETS, TASKS


EXAMPLES = """examples:
  dreamllm evaluate vqa --model ./dreamllm-7b --data vqav2_val.jsonl --preset vqav2 --output ./eval-vqav2
  dreamllm evaluate caption --model ./dreamllm-7b --data captions_val2014.json --preset coco-caption --limit 500
  accelerate launch -m dreamllm.cli evaluate pope --model ./dreamllm-7b --data pope_adversarial.jsonl --preset pope
"""


def add_arguments(parser: argparse.ArgumentParser):
    """Adds the options of `dreamllm evaluate` to `parser`."""
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    parser.epilog = EXAMPLES
    parser.add_argument("task", choices=TASKS, help="what to evaluate")
    parser.add_argument("--model", default=None, help="a saved DreamLLMPipeline folder or Hub repo (default: the toy model)")
    parser.add_argument("--data", required=True, help="a .jsonl / .json / .tsv file, a datasets folder or dataset name")
    parser.add_argument("--output", default="evaluation-output", help="folder of predictions and results.json")
    parser.add_argument("--preset", choices=sorted(PRESETS), help="the benchmark's original prompts and settings")
    parser.add_argument("--batch-size", type=int, default=8, help="samples per generation call (default 8)")
    parser.add_argument("--limit", type=int, default=None, help="evaluate only the first N samples")
    parser.add_argument("--seed", type=int, default=0, help="seed from which every sample's seed derives (default 0)")
    parser.add_argument("--circular", action="store_true", help="multiple-choice: ask every rotation of the options")
    for name in ("system-prompt", "prompt", "post-prompt"):
        parser.add_argument(f"--{name}", default=None, help=f"replace the preset's {name.replace('-', ' ')}")
    parser.add_argument("--max-new-tokens", type=int, default=None, help="replace the preset's answer length")
    parser.add_argument("--num-inference-steps", type=int, default=None, help="text-to-image: denoising steps")
    parser.add_argument("--guidance-scale", type=float, default=None, help="text-to-image: guidance scale")
    parser.add_argument("--num-images-per-caption", type=int, default=None, help="text-to-image: N, best by CLIP")
    parser.add_argument("--fid-image-size", type=int, default=None, help="text-to-image: FID crop size (256)")
    parser.add_argument("--clip-model", default=None, help="text-to-image: a CLIP model folder or repo")
    parser.add_argument("--fid-features", default=None,
                        help="text-to-image: 'inception' (needs torch-fidelity), 'vision-tower' or a CLIP folder")
    parser.add_argument("--image-root", default=None, help="folder of relative image paths (default: the data's)")
    parser.add_argument("--annotations", default=None, help="VQAv2 / OKVQA annotation JSON for a question JSON")
    parser.add_argument("--split", default="test", help="split of a datasets folder or name (default test)")


def run(args: argparse.Namespace) -> int:
    from .runner import evaluate

    for name in ("batch_size", "limit", "max_new_tokens", "num_inference_steps", "num_images_per_caption",
                 "fid_image_size"):
        value = getattr(args, name)
        if value is not None and value < 1:
            raise ValueError(f"--{name.replace('_', '-')} must be >= 1, got {value}")
    task_options = {k: v for k, v in (("clip_model", args.clip_model), ("fid_features", args.fid_features)) if v}
    report = evaluate(
        args.task, args.model, args.data, args.output, preset=args.preset, batch_size=args.batch_size, limit=args.limit,
        seed=args.seed, circular=args.circular, 
        data_options={"image_root": args.image_root, "annotations": args.annotations, "split": args.split},
        task_options=task_options or None,
        system_prompt=args.system_prompt, prompt=args.prompt, post_prompt=args.post_prompt,
        max_new_tokens=args.max_new_tokens, num_inference_steps=args.num_inference_steps,
        guidance_scale=args.guidance_scale, num_images_per_caption=args.num_images_per_caption,
        fid_image_size=args.fid_image_size,
    )
    print(json.dumps({"task": report["task"], "scores": report["scores"], "num_samples": report["num_samples"],
                      "num_failed": report["num_failed"], "results": f"{args.output}/results.json"}))
    return 0
