"""Sharded engines on mixed data: two CPU processes (gloo) train the tiny model with DDP, DeepSpeed ZeRO-2 and ZeRO-3 and FSDP2, while at every step one process holds captions, creations or plain text and the other something else.
Every engine runs the same collectives on both processes and ends with the weights DDP ends with, without and with
condition dropout, gradient checkpointing and accumulation; bf16 trains with DDP and FSDP2 (DeepSpeed bf16 needs an
accelerator); every engine saves a complete fp32 pipeline; a ZeRO-2 or ZeRO-3 run checkpointed mid-run and resumed
ends with the weights of the uninterrupted run (transformers refuses checkpoints of a model sharded at load time, the
FSDP2 of this test).

FSDP1, and accelerate's FSDP plugin, need a GPU (accelerate enables FSDP only for accelerator devices, and on CPU
would run DDP instead: the trainer refuses that, tested here); FSDP2 runs here
the supported way for CPUs, sharded by transformers at load time (`from_pretrained(distributed_config=...)`), which
the Trainer detects. DeepSpeed runs on CPU over gloo when the Trainer is given `ddp_backend="gloo"`.

Run as a script, this file is the worker each process executes: one launch runs every engine in turn.
"""

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ENGINES = ("ddp", "zero2", "zero3", "fsdp2")
VARIANTS = {
    "plain": {},
    "dropout-checkpointing-accumulation": {
        "condition_dropout": 0.5, "activation_checkpointing": True, "gradient_accumulation_steps": 2,
        "per_device_train_batch_size": 1,
    },
}
STEPS = 3
BF16_ENGINES = ("ddp", "fsdp2")  # TrainingArguments refuses bf16 for DeepSpeed without an accelerator
RESUMED_ENGINES = ("zero2", "zero3")  # transformers refuses checkpoints of a model sharded at load time (FSDP2 here)
RESUMED_VARIANT = "dropout-checkpointing-accumulation"


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def write_mixed_data(folder: Path) -> Path:
    """Documents in the order the sequential sampler deals them: each step, the processes get different kinds."""
    from dreamllm import toy_world

    kinds = {kind: [json.loads(line) for line in toy_world.write_dataset(folder, kind, 8, seed=1).read_text().splitlines()]
             for kind in ("caption", "creation")}
    kinds["text"] = [{"segments": [{"text": f"just some words number {index} here"}]} for index in range(8)]
    plan = [("caption", "text"), ("creation", "caption"), ("text", "creation"), ("caption", "creation")] * 2
    records = []
    for step, (first, second) in enumerate(plan):  # batch 2: process 0 takes 2 records, process 1 the next 2
        records += [kinds[first][step % 8], kinds[first][(step + 4) % 8], kinds[second][step % 8], kinds[second][(step + 4) % 8]]
    path = folder / "mixed.jsonl"
    path.write_text("".join(json.dumps(record) + "\n" for record in records))
    return path


@pytest.mark.skipif(not __import__("importlib").util.find_spec("deepspeed"), reason="needs DeepSpeed (.ci/run installs it)")
def test_engines_give_the_weights_of_ddp_on_mixed_data(tmp_path):
    from dreamllm import DreamLLMPipeline
    from dreamllm.testing import tiny_pipeline

    write_mixed_data(tmp_path)
    tiny_pipeline(0).save_pretrained(tmp_path / "base")
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", str(free_port()),
               __file__, str(tmp_path)]
    environment = {**os.environ, "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}
    finished = subprocess.run(command, env=environment, capture_output=True, text=True, timeout=500)
    assert finished.returncode == 0, finished.stderr[-5000:]

    results = torch.load(tmp_path / "results.pt", weights_only=True)
    for engine, variant in ((engine, variant) for engine in ENGINES[1:] for variant in VARIANTS):
        reference = results["ddp", variant]
        weights = results[engine, variant]
        assert weights.keys() == reference.keys()
        for name, value in weights.items():
            torch.testing.assert_close(value, reference[name], rtol=1e-4, atol=1e-5, msg=f"{engine} {variant} {name}")
    for engine in RESUMED_ENGINES:  # resumed mid-run under the engine: the weights of the uninterrupted run
        assert results[engine, "resumed steps"].item() == STEPS - 2, engine
        for name, value in results[engine, "resumed"].items():
            torch.testing.assert_close(value, results[engine, RESUMED_VARIANT][name], rtol=1e-5, atol=1e-6,
                                       msg=f"{engine} resumed {name}")
    initial = tiny_pipeline(0).model.state_dict()
    assert not torch.equal(results["ddp", "plain"]["model.dream_projector.weight"], initial["model.dream_projector.weight"])
    assert not torch.equal(results["ddp", "plain"]["model.vision_projector.weight"], initial["model.vision_projector.weight"])
    for engine in BF16_ENGINES:
        assert results["bf16 finite", engine].item(), engine
    assert results["fsdp1 refused on CPU"].item()
    for engine in ENGINES:
        saved = DreamLLMPipeline.from_pretrained(tmp_path / f"saved-{engine}").model
        for name, value in saved.state_dict().items():
            assert value.dtype == torch.float32, (engine, name)
            torch.testing.assert_close(value, results[engine, "plain"][name], rtol=0, atol=0, msg=f"{engine} {name}")
    setup = (tmp_path / "setup.log").read_text()
    for name in ("DDP", "DeepSpeed ZeRO-2", "DeepSpeed ZeRO-3", "FSDP2"):
        assert f"Training with {name}" in setup and "on 2 process(es)" in setup


CONFIGS = Path(__file__).resolve().parents[1] / "training" / "accelerate_configs"


def engine_arguments(engine: str) -> dict:
    """
    Training arguments for `engine`; DeepSpeed is configured as `accelerate launch --config_file zeroN.yaml` does,
    through the environment, with the shipped DeepSpeed file.
    """
    for name in ("ACCELERATE_USE_DEEPSPEED", "ACCELERATE_DEEPSPEED_CONFIG_FILE"):
        os.environ.pop(name, None)
    if engine.startswith("zero"):
        os.environ["ACCELERATE_USE_DEEPSPEED"] = "true"
        os.environ["ACCELERATE_DEEPSPEED_CONFIG_FILE"] = str(CONFIGS / f"{engine}.json")
        return {"use_cpu": False, "ddp_backend": "gloo"}
    return {"use_cpu": True}


class StepCounter(__import__("transformers").TrainerCallback):
    """Counts the optimizer steps a run takes (a resumed run: only those after its checkpoint)."""

    steps = 0

    def on_step_end(self, args, state, control, **kwargs):
        self.steps += 1


def train_once(workdir: Path, engine: str, variant: dict, bf16: bool = False, resume_from: Path | None = None,
               save_steps: int | None = None):
    from accelerate.state import AcceleratorState
    from transformers.distributed import DistributedConfig

    from dreamllm import DreamLLMForCausalLM, DreamLLMPipeline
    from dreamllm.training import JsonlDocumentDataset, build_trainer, dreamllm_training_arguments

    AcceleratorState._reset_state(reset_partial_state=True)
    variant = dict(variant)
    condition_dropout = variant.pop("condition_dropout", 0.0)
    model = None
    if engine == "fsdp2":
        plan = {"model.language_model.layers.*": "free_full_weight", "model.vision_tower.encoder.layers.*": "free_full_weight"}
        model = DreamLLMForCausalLM.from_pretrained(workdir / "base", distributed_config=DistributedConfig(fsdp_size=2, fsdp_plan=plan))
    pipeline = DreamLLMPipeline.from_pretrained(workdir / "base", **({"model": model} if model is not None else {}))
    dataset = JsonlDocumentDataset(workdir / "mixed.jsonl", pipeline.processor)
    saving = {"save_strategy": "steps", "save_steps": save_steps} if save_steps else {"save_strategy": "no"}
    arguments = {"max_steps": STEPS, "per_device_train_batch_size": 2, "logging_steps": 1, **saving,
                 "disable_tqdm": True, "learning_rate": 1e-2, "train_sampling_strategy": "sequential", "bf16": bf16,
                 **engine_arguments(engine), **variant}
    args = dreamllm_training_arguments(workdir / f"run-{engine}", **arguments)
    trainer = build_trainer(pipeline, dataset, args, stage=2, random_flip=False, condition_dropout=condition_dropout)
    trained_steps = StepCounter()
    trainer.add_callback(trained_steps)
    trainer.train(resume_from_checkpoint=str(resume_from) if resume_from else None)
    losses = [entry["loss"] for entry in trainer.state.log_history if "loss" in entry]
    state_dict = trainer.full_state_dict()
    if not variant and not condition_dropout and not bf16 and not resume_from and not save_steps:
        trainer.save_pretrained(workdir / f"saved-{engine}")
    return state_dict, losses, trained_steps.steps


def run_worker(workdir: Path):
    import logging

    torch.set_num_threads(1)
    rank = int(os.environ["RANK"])
    if rank == 0:
        logging.basicConfig(filename=workdir / "setup.log", format="%(message)s")
    logging.getLogger("dreamllm").setLevel(logging.INFO)
    results = {}
    for engine in ENGINES:
        for name, variant in VARIANTS.items():
            state_dict, _, _ = train_once(workdir, engine, variant)
            results[engine, name] = {key: value.float() for key, value in state_dict.items()}
        if engine in BF16_ENGINES:
            _, losses, _ = train_once(workdir, engine, {}, bf16=True)
            results["bf16 finite", engine] = torch.tensor(all(torch.isfinite(torch.tensor(losses))) and len(losses) == STEPS)
        if engine in RESUMED_ENGINES:  # checkpoint at step 2 of a run, then resume it from there to the last step
            train_once(workdir, engine, VARIANTS[RESUMED_VARIANT], save_steps=2)
            checkpoint = workdir / f"run-{engine}" / "checkpoint-2"
            state_dict, _, trained_steps = train_once(workdir, engine, VARIANTS[RESUMED_VARIANT], resume_from=checkpoint)
            results[engine, "resumed"] = {key: value.float() for key, value in state_dict.items()}
            results[engine, "resumed steps"] = torch.tensor(trained_steps)
    results["fsdp1 refused on CPU"] = torch.tensor(fsdp1_is_refused(workdir))
    if rank == 0:
        torch.save(results, workdir / "results.pt")


def fsdp1_is_refused(workdir: Path) -> bool:
    """Whether training with FSDP1 asked through the Trainer's arguments fails loudly on CPU, where accelerate runs DDP."""
    fsdp_config = {"version": 1, "transformer_layer_cls_to_wrap": ["LlamaDecoderLayer"], "sync_module_states": False}
    try:
        train_once(workdir, "ddp", {"fsdp": True, "fsdp_config": fsdp_config})
    except ValueError as error:
        return "fsdp" in str(error) and "without FSDP" in str(error)
    return False


if __name__ == "__main__":
    run_worker(Path(sys.argv[1]))
