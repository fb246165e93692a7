"""Data-parallel training: `accelerate launch` runs two CPU processes (gloo) for a few steps; they see different
documents, end with identical weights, and save one pipeline folder.

Run as a script, this file is the worker each process executes.
"""

import hashlib
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from dreamllm import DreamLLMPipeline
from dreamllm.testing import tiny_pipeline
from dreamllm.training import JsonlDocumentDataset, build_trainer, dreamllm_training_arguments

STEPS = 3
BATCH_SIZE = 2


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def test_two_processes_train_in_sync(tmp_path):
    from dreamllm import toy_world

    toy_world.write_dataset(tmp_path, "document", 12, seed=0, filename="data.jsonl")
    command = [
        sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
        "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
        "--main_process_port", str(free_port()), __file__, str(tmp_path),
    ]
    environment = {**os.environ, "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}
    finished = subprocess.run(command, env=environment, capture_output=True, text=True, timeout=240)
    assert finished.returncode == 0, finished.stderr[-4000:]

    ranks = [torch.load(tmp_path / f"rank{rank}.pt", weights_only=False) for rank in range(2)]
    assert [result["world_size"] for result in ranks] == [2, 2]
    for name, value in ranks[0]["parameters"].items():
        assert torch.equal(value, ranks[1]["parameters"][name]), name
    initial = tiny_pipeline(0).model.state_dict()
    assert not torch.equal(ranks[0]["parameters"]["model.dream_projector.weight"], initial["model.dream_projector.weight"])
    saved = DreamLLMPipeline.from_pretrained(tmp_path / "run").model  # written once, by the main process
    for name, value in saved.named_parameters():
        assert torch.equal(value, ranks[0]["parameters"][name]), name
    assert not list(tmp_path.glob(".*.partial"))

    seen = [set(result["documents"]) for result in ranks]
    assert len(seen[0]) == len(seen[1]) == STEPS * BATCH_SIZE
    assert not seen[0] & seen[1]
    # The logged loss is averaged over both processes; it equals the weighted sum of the parts only when each
    # process scales its loss for the gradient averaging.
    for entry in (entry for entry in ranks[0]["log_history"] if "lm_loss" in entry):
        assert entry["loss"] == pytest.approx(entry["lm_loss"] + 10 * entry["diffusion_loss"], rel=1e-4)


def run_worker(workdir: Path):
    """Trains the tiny pipeline a few steps on this process's shard and saves what the test compares."""
    torch.set_num_threads(1)
    pipeline = tiny_pipeline(0)
    dataset = JsonlDocumentDataset(workdir / "data.jsonl", pipeline.processor)
    args = dreamllm_training_arguments(
        workdir / "run", max_steps=STEPS, per_device_train_batch_size=BATCH_SIZE, logging_steps=1,
        save_strategy="no", disable_tqdm=True, learning_rate=1e-3, use_cpu=True,
    )
    trainer = build_trainer(pipeline, dataset, args, stage=2)
    documents = []
    collate = trainer.data_collator

    def collate_and_record(records):
        documents.extend(hashlib.sha1(document.images[0].tobytes()).hexdigest() for document in records)
        return collate(records)

    trainer.data_collator = collate_and_record
    trainer.train()
    model = trainer.accelerator.unwrap_model(trainer.model)
    result = {
        "world_size": trainer.args.world_size,
        "parameters": {name: value.detach().clone() for name, value in model.named_parameters()},
        "documents": documents,
        "log_history": trainer.state.log_history,
    }
    torch.save(result, workdir / f"rank{trainer.args.process_index}.pt")
    trainer.save_pretrained()


if __name__ == "__main__":
    run_worker(Path(sys.argv[1]))
