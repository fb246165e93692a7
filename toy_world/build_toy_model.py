"""Builds the toy-world DreamLLM that ships with the package, from nothing, in resumable steps.

    python -m dreamllm.toy_world.build_toy_model --work-dir toy-build            # every step, skipping finished ones
    python -m dreamllm.toy_world.build_toy_model --work-dir toy-build --only vae # one step
    python -m dreamllm.toy_world.build_toy_model --work-dir toy-build --from-components PIPELINE --install
        # reuse PIPELINE's VAE, vision encoder and UNet (steps 1-3), retrain only the language side
    python -m dreamllm.toy_world.build_toy_model --work-dir toy-build --from-components PIPELINE --finetune-unet
        # reuse PIPELINE's VAE and vision encoder; fine-tune its UNet with a new caption encoder (step 3)

Steps (each writes `<work-dir>/<step>/` atomically; a finished step is skipped on the next run):

1. `vae`: the VAE (scale factor 4) on rendered toy pictures.
2. `vision`: the CLIP vision encoder, taught colour, shape, size and position (frozen afterwards).
3. `unet`: the UNet with the toy caption encoder of colour, shape and size (this world's "Stable Diffusion"), saved
   in `unet/unet/` and `unet/condition_encoder/`; samples a check grid.
4. `assemble`: a DreamLLMPipeline with those components, the toy tokenizer and a random language model.
5. `data`: toy-world training documents in the JSON Lines format of `dreamllm.training`.
6. `dreamllm`: DreamLLM's pretraining (stage II: language model, projectors, dream queries) with `dreamllm.training`.
7. `sft`: DreamLLM's instruction tuning (stage III) on conversations, with `dreamllm.training`.
8. `export`: the final pipeline, with the DPM-Solver++ scheduler; with `--install` it replaces the package's
   `dreamllm/toy_model/`.

Timings of each step are appended to `<work-dir>/timings.json`. Use `--threads` to set torch's CPU threads.
"""

import argparse
import json
import shutil
import time
from pathlib import Path

import torch
from diffusers import AutoencoderKL, DPMSolverMultistepScheduler, UNet2DConditionModel
from transformers import CLIPVisionModel

from dreamllm.file_utils import atomic_directory
from dreamllm.pipelines import TOY_MODEL_PATH, DreamLLMPipeline
from dreamllm.toy_world import components as toy_model
from dreamllm.toy_world import world as toy_world
from dreamllm.training import train

STEPS = ("vae", "vision", "unet", "assemble", "data", "dreamllm", "sft", "export")
DATA_MIX = {
    "document": 6000, "creation": 3000, "caption": 3000, "qa": 3000, "instruction_creation": 4000, "impossible_request": 600,
}
SFT_MIX = {"qa": 3000, "instruction_creation": 6000, "impossible_request": 600, "conversation": 3000, "creation": 1500}
PRETRAINED_COMPONENTS = ("vae", "vision", "unet")
DREAMLLM_STEPS = {  # step: (the folder it starts from, its training data, DreamLLM stage, share of --learning-rate)
    "dreamllm": ("assemble", "data/pretraining/train.jsonl", 2, 1.0),
    "sft": ("dreamllm", "data/instructions/train.jsonl", 3, 1 / 3),
}


def log_to(work_dir: Path):
    def log(message: str):
        print(message, flush=True)
        with open(work_dir / "log.txt", "a") as f:
            f.write(message + "\n")

    return log


def record_time(work_dir: Path, step: str, seconds: float):
    path = work_dir / "timings.json"
    timings = json.loads(path.read_text()) if path.exists() else {}
    timings[step] = round(seconds, 1)
    path.write_text(json.dumps(timings, indent=2))


def step_vae(work_dir: Path, args, log):
    pictures = toy_model.ScenePictures.render(args.num_pictures, seed=1)
    torch.manual_seed(args.seed)
    vae = toy_model.train_vae(toy_model.toy_vae(), pictures, steps=args.vae_steps, seed=args.seed, log=log)
    with torch.no_grad():
        images = toy_model.to_unit_range(pictures.pixels[:256])
        error = (vae.decode(vae.encode(images).latent_dist.mean).sample - images).pow(2).mean().item()
    log(f"vae reconstruction MSE {error:.5f}, scaling_factor {vae.config.scaling_factor:.4f}")
    return vae


def step_vision(work_dir: Path, args, log):
    pictures = toy_model.ScenePictures.render(args.num_pictures, seed=2)
    torch.manual_seed(args.seed)
    encoder = CLIPVisionModel(toy_model.toy_vision_config())
    image_processor = toy_model.toy_processor().image_processor
    return toy_model.train_vision_encoder(encoder, image_processor, pictures, steps=args.vision_steps, seed=args.seed, log=log)


def step_unet(work_dir: Path, args, log):
    vae = AutoencoderKL.from_pretrained(work_dir / "vae")
    pictures = toy_model.ScenePictures.render(args.num_pictures, seed=3)
    torch.manual_seed(args.seed)
    encoder = toy_model.ToyConditionEncoder()
    unet = UNet2DConditionModel.from_pretrained(args.from_components / "unet") if args.finetune_unet else toy_model.toy_unet()
    unet = toy_model.train_unet(unet, encoder, vae, pictures, steps=args.unet_steps, seed=args.seed, log=log)
    colour, shape, size = torch.arange(18) // 3, torch.arange(18) % 3, torch.arange(18) % len(toy_world.SIZE_RANGES)
    images = toy_model.sample_with_condition_encoder(unet, encoder, vae, colour, shape, size, seed=args.seed)
    correct = sum(
        toy_world.analyze_image(picture) == (toy_world.COLOUR_NAMES[c], toy_world.SHAPES[s])
        and toy_world.size_matches(picture, toy_world.SHAPES[s], list(toy_world.SIZE_RANGES)[z])
        for picture, c, s, z in zip(toy_model.to_pil(images), colour, shape, size)
    )
    log(f"unet check: {correct}/18 pictures show the asked colour, shape and size")
    return {"unet": unet, "condition_encoder": encoder}


def step_assemble(work_dir: Path, args, log):
    return toy_model.assemble_pipeline(
        vae=AutoencoderKL.from_pretrained(work_dir / "vae"),
        unet=UNet2DConditionModel.from_pretrained(work_dir / "unet" / "unet"),
        vision_encoder=CLIPVisionModel.from_pretrained(work_dir / "vision"),
        processor=toy_model.toy_processor(),
        seed=args.seed,
    )


def write_mix(folder: Path, mix: dict[str, int], seed: int) -> Path:
    lines = []
    for offset, (kind, count) in enumerate(mix.items()):
        path = toy_world.write_dataset(folder, kind, count, seed=seed + offset)
        lines += path.read_text().splitlines()
    order = torch.randperm(len(lines), generator=torch.Generator().manual_seed(seed)).tolist()
    mixed = folder / "train.jsonl"
    mixed.write_text("\n".join(lines[i] for i in order) + "\n")
    return mixed


def step_data(output: Path, args, log):
    def scaled(mix):
        return {kind: max(1, round(count * args.data_scale)) for kind, count in mix.items()}

    write_mix(output / "pretraining", scaled(DATA_MIX), seed=100)
    write_mix(output / "instructions", scaled(SFT_MIX), seed=200)


def dreamllm_stage(step: str, work_dir: Path, args):
    """
    Trains with `dreamllm.training.train` into `<step>.partial`, renamed to `<step>` when done; an interrupted run
    resumes from its last checkpoint there.
    """
    start_folder, data, stage, learning_rate_share = DREAMLLM_STEPS[step]
    steps = getattr(args, f"{step}_steps")
    output = work_dir / f"{step}.partial"
    train(
        work_dir / start_folder,
        work_dir / data,
        output,
        stage=stage,
        random_flip=False,
        resume_from_checkpoint=True if any(output.glob("checkpoint-*")) else None,
        condition_dropout=args.condition_dropout,
        max_steps=steps,
        learning_rate=args.learning_rate * learning_rate_share,
        warmup_steps=max(1, steps // 30),
        per_device_train_batch_size=args.batch_size,
        save_steps=max(50, steps // 4),
        save_total_limit=1,
        logging_steps=max(1, steps // 40),
        seed=args.seed,
        dataloader_num_workers=0,
    )
    output.rename(work_dir / step)


def remove_local_paths(folder: Path):
    """Drops `_name_or_path` (the build machine's folder the components were loaded from) from every saved config."""
    for path in folder.rglob("*.json"):
        config = json.loads(path.read_text())
        if isinstance(config, dict) and config.pop("_name_or_path", None) is not None:
            path.write_text(json.dumps(config, indent=2) + "\n")


def export(work_dir: Path, output: Path, install: bool, log):
    """Saves the stage III pipeline as `export/` (sampling with DPM-Solver++, as good at 20 steps as DDPM at 50 on the
    toy world, see `benchmarks/results/toy_scheduler_comparison.json`) and, with `install`, as the package's built-in
    model."""
    pipeline = DreamLLMPipeline.from_pretrained(work_dir / "sft")
    pipeline.scheduler = DPMSolverMultistepScheduler.from_config(pipeline.scheduler.config, algorithm_type="dpmsolver++")
    with atomic_directory(output) as staging:
        pipeline.save_pretrained(staging)
        remove_local_paths(staging)
    if install:
        with atomic_directory(TOY_MODEL_PATH) as staging:
            shutil.copytree(output, staging, dirs_exist_ok=True)
        log(f"installed the exported model in {TOY_MODEL_PATH}")


def seed_components(source: Path, work_dir: Path, steps: tuple[str, ...], log):
    """Fills the folders of `steps` (of `vae`, `vision` and `unet`) that do not exist yet from the saved pipeline
    `source`, so a rebuild that changes only the language (tokenizer, texts) skips pretraining the picture components."""
    pipeline = DreamLLMPipeline.from_pretrained(source)
    components = {"vae": pipeline.vae, "vision": pipeline.model.model.vision_tower, "unet": pipeline.unet}
    for step in steps:
        output = work_dir / step
        if output.exists():
            continue
        with atomic_directory(output) as staging:
            components[step].save_pretrained(staging / "unet" if step == "unet" else staging)
        remove_local_paths(output)
        log(f"{step}: taken from {source}")


def run_step(step: str, work_dir: Path, args, log):
    output = work_dir / step
    if output.exists():
        log(f"{step}: done already ({output})")
        return
    start = time.perf_counter()
    log(f"{step}: starting")
    if step in DREAMLLM_STEPS:
        dreamllm_stage(step, work_dir, args)
    elif step == "export":
        export(work_dir, output, args.install, log)
    elif step == "data":
        with atomic_directory(output) as staging:
            step_data(staging, args, log)
    else:
        components = globals()[f"step_{step}"](work_dir, args, log)
        if not isinstance(components, dict):
            components = {".": components}
        with atomic_directory(output) as staging:
            for name, component in components.items():
                component.save_pretrained(staging / name)
    record_time(work_dir, step, time.perf_counter() - start)
    log(f"{step}: finished in {time.perf_counter() - start:.0f} s")


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--work-dir", type=Path, default=Path("toy-build"))
    parser.add_argument("--only", choices=STEPS, action="append", help="Run only these steps (repeatable).")
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--num-pictures", type=int, default=20000)
    parser.add_argument("--vae-steps", type=int, default=2000)
    parser.add_argument("--vision-steps", type=int, default=3000)
    parser.add_argument("--unet-steps", type=int, default=3000)
    parser.add_argument("--dreamllm-steps", type=int, default=1500)
    parser.add_argument("--sft-steps", type=int, default=1500)
    parser.add_argument("--data-scale", type=float, default=1.0, help="Multiplies the number of training documents.")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--learning-rate", type=float, default=1e-3)
    parser.add_argument("--condition-dropout", type=float, default=0.1)
    parser.add_argument(
        "--from-components", type=Path, default=None, metavar="PIPELINE",
        help="Take the VAE, vision encoder and UNet from this saved pipeline (e.g. the installed toy model) instead of "
        "pretraining them.",
    )
    parser.add_argument(
        "--finetune-unet", action="store_true",
        help="With --from-components: train its UNet further (--unet-steps) with a new caption encoder instead of "
        "taking it as it is.",
    )
    parser.add_argument("--install", action="store_true", help="Copy the exported model into the package checkout.")
    parser.add_argument("--clean", action="store_true", help="Delete the work directory first.")
    args = parser.parse_args()
    if args.from_components and not (args.from_components / "model_index.json").is_file():
        parser.error(f"--from-components {args.from_components}: not a saved pipeline folder (no model_index.json)")
    if args.finetune_unet and not args.from_components:
        parser.error("--finetune-unet needs --from-components PIPELINE (the pipeline whose UNet it fine-tunes)")
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.clean and args.work_dir.exists():
        shutil.rmtree(args.work_dir)
    args.work_dir.mkdir(parents=True, exist_ok=True)
    log = log_to(args.work_dir)
    if args.from_components:
        taken = tuple(step for step in PRETRAINED_COMPONENTS if not (args.finetune_unet and step == "unet"))
        seed_components(args.from_components, args.work_dir, taken, log)
    for step in args.only or STEPS:
        run_step(step, args.work_dir, args, log)


if __name__ == "__main__":
    main()
