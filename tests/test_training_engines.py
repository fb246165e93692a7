"""Sharded engines on mixed data: two CPU processes (gloo) train the tiny model with DDP, DeepSpeed ZeRO-2 and ZeRO-3, FSDP1 and FSDP2, while at every step one process holds captions, creations or plain text and the other something else.
Every engine runs the same collectives on both processes and ends with the weights DDP ends with, without and with
condition dropout, gradient checkpointing and accumulation; bf16 trains with DDP, FSDP1 and FSDP2 (DeepSpeed bf16
needs an accelerator); every engine saves a complete fp32 pipeline; a ZeRO-2, ZeRO-3 or FSDP2 (accelerate) run
checkpointed mid-run and resumed ends with the weights of the uninterrupted run.

FSDP2 runs two ways: through accelerate's FSDP plugin with the shipped fsdp2.yaml (sharded state dict), and sharded
by transformers at load time (`from_pretrained(distributed_config=...)`, which the Trainer detects; transformers
refuses checkpoints of such a model). FSDP1 runs with the shipped fsdp1.yaml. accelerate enables its FSDP plugin only
for accelerator devices (on CPU it would run DDP instead: the trainer refuses that, tested here), while torch's FSDP
itself runs on CPU over gloo, so the launch of the plugins lifts accelerate's device gate in its worker. FSDP1's
resume is not checked: on a CPU device its full optimizer state comes out wrong. DeepSpeed runs on CPU over gloo
when the Trainer is given `ddp_backend="gloo"`.

Run as a script, this file is the worker each process executes: one launch runs the engines it is given in turn.
"""

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ENGINES = ("ddp", "zero2", "zero3", "fsdp2")  # one launch; accelerate's FSDP plugins (and DDP again) in another
VARIANTS = {
    "plain": {},
    "dropout-checkpointing-accumulation": {
        "condition_dropout": 0.5, "activation_checkpointing": True, "gradient_accumulation_steps": 2,
        "per_device_train_batch_size": 1,
    },
}
STEPS = 3
# TrainingArguments refuses bf16 for DeepSpeed without an accelerator
BF16_ENGINES = ("ddp", "fsdp1", "fsdp2", "fsdp2-plugin")
# transformers refuses checkpoints of a model sharded at load time (FSDP2 here); FSDP1 on a CPU device writes wrong
# optimizer moments in its full optimizer state (about 1000x smaller than DDP's), so its resume is not checked here.
RESUMED_ENGINES = ("zero2", "zero3", "fsdp2-plugin")
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


def launch_engines(workdir: Path, engines: tuple[str, ...]) -> dict:
    """Trains the tiny model with each of `engines` on the mixed data on two processes; their results."""
    from dreamllm.testing import tiny_pipeline

    write_mixed_data(workdir)
    tiny_pipeline(0).save_pretrained(workdir / "base")
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", str(free_port()),
               __file__, str(workdir), *engines]
    environment = {**os.environ, "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}
    finished = subprocess.run(command, env=environment, capture_output=True, text=True, timeout=500)
    assert finished.returncode == 0, finished.stderr[-5000:]
    return torch.load(workdir / "results.pt", weights_only=True)


def assert_engines_match_ddp(workdir: Path, results: dict, engines: tuple[str, ...], names: tuple[str, ...]):
    """Each engine: the weights of DDP in every variant, bf16 finite, resumed = uninterrupted, a complete fp32 save."""
    from dreamllm import DreamLLMPipeline

    for engine, variant in ((engine, variant) for engine in engines if engine != "ddp" for variant in VARIANTS):
        reference = results["ddp", variant]
        weights = results[engine, variant]
        assert weights.keys() == reference.keys()
        for name, value in weights.items():
            torch.testing.assert_close(value, reference[name], rtol=1e-4, atol=1e-5, msg=f"{engine} {variant} {name}")
    for engine in set(RESUMED_ENGINES) & set(engines):  # resumed mid-run under the engine: the uninterrupted weights
        assert results[engine, "resumed steps"].item() == STEPS - 2, engine
        for name, value in results[engine, "resumed"].items():
            torch.testing.assert_close(value, results[engine, RESUMED_VARIANT][name], rtol=1e-5, atol=1e-6,
                                       msg=f"{engine} resumed {name}")
    for engine in set(BF16_ENGINES) & set(engines):
        assert results["bf16 finite", engine].item(), engine
    for engine in engines:
        saved = DreamLLMPipeline.from_pretrained(workdir / f"saved-{engine}").model.state_dict()
        assert saved.keys() == results[engine, "plain"].keys(), engine
        for name, value in saved.items():
            assert value.dtype == torch.float32, (engine, name)
            torch.testing.assert_close(value, results[engine, "plain"][name], rtol=0, atol=0, msg=f"{engine} {name}")
    setup = (workdir / "setup.log").read_text()
    for name in names:
        assert f"Training with {name} on 2 process(es)" in setup, name


@pytest.mark.skipif(not __import__("importlib").util.find_spec("deepspeed"), reason="needs DeepSpeed (.ci/run installs it)")
def test_engines_give_the_weights_of_ddp_on_mixed_data(tmp_path):
    from dreamllm.testing import tiny_pipeline

    results = launch_engines(tmp_path, ENGINES)
    assert_engines_match_ddp(tmp_path, results, ENGINES, ("DDP", "DeepSpeed ZeRO-2", "DeepSpeed ZeRO-3",
                                                        "FSDP2 (sharded by transformers at load time)"))
    initial = tiny_pipeline(0).model.state_dict()
    assert not torch.equal(results["ddp", "plain"]["model.dream_projector.weight"], initial["model.dream_projector.weight"])
    assert not torch.equal(results["ddp", "plain"]["model.vision_projector.weight"], initial["model.vision_projector.weight"])
    assert results["fsdp1 refused on CPU"].item()


def test_accelerate_fsdp_plugins_give_the_weights_of_ddp_on_mixed_data(tmp_path):
    """
    accelerate's FSDP plugin with the shipped configs: fsdp1.yaml (decoder and CLIP layers as units, full state dict)
    and fsdp2.yaml (the same units, sharded state dict: the save must gather it).
    """
    engines = ("ddp", *ACCELERATE_FSDP_ENGINES)
    results = launch_engines(tmp_path, engines)
    assert_engines_match_ddp(tmp_path, results, engines, ("DDP", "FSDP1", "FSDP2"))


CONFIGS = Path(__file__).resolve().parents[1] / "training" / "accelerate_configs"
ACCELERATE_FSDP_ENGINES = {"fsdp1": "fsdp1.yaml", "fsdp2-plugin": "fsdp2.yaml"}  # accelerate's FSDP plugin, shipped configs


def engine_arguments(engine: str) -> dict:
    """
    Training arguments for `engine`; DeepSpeed is configured as `accelerate launch --config_file zeroN.yaml` does,
    through the environment, with the shipped DeepSpeed file.
    """
    for name in ("ACCELERATE_USE_DEEPSPEED", "ACCELERATE_DEEPSPEED_CONFIG_FILE", "ACCELERATE_USE_FSDP"):
        os.environ.pop(name, None)
    if engine.startswith("zero"):
        os.environ["ACCELERATE_USE_DEEPSPEED"] = "true"
        os.environ["ACCELERATE_DEEPSPEED_CONFIG_FILE"] = str(CONFIGS / f"{engine}.json")
        return {"use_cpu": False, "ddp_backend": "gloo"}
    if engine in ACCELERATE_FSDP_ENGINES:
        import yaml

        fsdp_config = yaml.safe_load((CONFIGS / ACCELERATE_FSDP_ENGINES[engine]).read_text())["fsdp_config"]
        fsdp_config["fsdp_sync_module_states"] = False  # broadcasting at wrap time needs an accelerator
        return {"use_cpu": True, "fsdp": "full_shard", "fsdp_config": fsdp_config}
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


def run_worker(workdir: Path, engines: tuple[str, ...]):
    import logging

    torch.set_num_threads(1)
    rank = int(os.environ["RANK"])
    if rank == 0:
        logging.basicConfig(filename=workdir / "setup.log", format="%(message)s")
    logging.getLogger("dreamllm").setLevel(logging.INFO)
    if set(engines) & set(ACCELERATE_FSDP_ENGINES):
        lift_accelerate_cpu_gate()
    results = {}
    for engine in engines:
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
    if not set(engines) & set(ACCELERATE_FSDP_ENGINES):
        results["fsdp1 refused on CPU"] = torch.tensor(fsdp1_is_refused(workdir))
    if rank == 0:
        torch.save(results, workdir / "results.pt")


def lift_accelerate_cpu_gate():
    """
    Lets accelerate run its FSDP plugin on CPU processes: it keeps FSDP for accelerator devices only and would run DDP
    (torch's FSDP1 itself runs on CPU over gloo). The state becomes FSDP on the CPU device whenever a plugin is given,
    and stays so when it is built again (every `AcceleratorState()` copies the process state's type back in).

    accelerate gathers FSDP1's full state dict with `offload_to_cpu=True`, which on a CPU device frees the gathered
    parameters while they are read (torch moves them "to the CPU" in place, then frees the original): there, the
    offload leaves them where they are.
    """
    import contextlib

    from accelerate.state import AcceleratorState
    from accelerate.utils import DistributedType
    from torch.distributed.fsdp._flat_param import FlatParamHandle

    offload = FlatParamHandle.to_cpu

    def offload_unless_on_cpu(self):
        return contextlib.nullcontext() if self.flat_param.device.type == "cpu" else offload(self)

    FlatParamHandle.to_cpu = offload_unless_on_cpu
    initialize = AcceleratorState.__init__

    def initialize_with_fsdp_on_cpu(self, *args, fsdp_plugin=None, **kwargs):
        initialize(self, *args, fsdp_plugin=fsdp_plugin, **kwargs)
        fsdp_plugin = fsdp_plugin or getattr(self, "fsdp_plugin", None)
        if fsdp_plugin is not None and self.distributed_type == DistributedType.MULTI_CPU:
            self.distributed_type, self.fsdp_plugin, self.device = DistributedType.FSDP, fsdp_plugin, torch.device("cpu")

    AcceleratorState.__init__ = initialize_with_fsdp_on_cpu


def fsdp1_is_refused(workdir: Path) -> bool:
    """Whether training with FSDP1 asked through the Trainer's arguments fails loudly on CPU, where accelerate runs DDP."""
    fsdp_config = {"version": 1, "transformer_layer_cls_to_wrap": ["LlamaDecoderLayer"], "sync_module_states": False}
    try:
        train_once(workdir, "ddp", {"fsdp": True, "fsdp_config": fsdp_config})
    except ValueError as error:
        return "fsdp" in str(error) and "without FSDP" in str(error)
    return False


if __name__ == "__main__":
    run_worker(Path(sys.argv[1]), tuple(sys.argv[2:]))
