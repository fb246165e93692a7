"""`accelerate launch -m dreamllm.cli evaluate` on two CPU processes (gloo) gives the one-process predictions."""

import json
import os
import socket
import subprocess
import sys

from dreamllm.cli import main
from dreamllm.evaluation.toy_data import write_toy_evaluation_data


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def test_two_processes_shard_and_gather_the_same_predictions(tmp_path):
    data = write_toy_evaluation_data(tmp_path / "data", num_samples=5)["vqa"]
    arguments = ["evaluate", "vqa", "--data", str(data), "--batch-size", "2", "--system-prompt", "", "--prompt", "",
                 "--post-prompt", ""]
    command = [
        sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
        "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
        "--main_process_port", str(free_port()), "-m", "dreamllm.cli", *arguments, "--output", str(tmp_path / "two"),
    ]
    environment = {**os.environ, "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}
    finished = subprocess.run(command, env=environment, capture_output=True, text=True, timeout=240)
    assert finished.returncode == 0, finished.stderr[-4000:]
    assert main([*arguments, "--output", str(tmp_path / "one")]) == 0

    def predictions(folder):
        lines = [json.loads(line) for file in sorted(folder.glob("predictions-rank*.jsonl"))
                 for line in file.read_text().splitlines()]
        return sorted(lines, key=lambda record: record["index"])

    two = json.loads((tmp_path / "two" / "results.json").read_text())
    one = json.loads((tmp_path / "one" / "results.json").read_text())
    assert sorted(p.name for p in (tmp_path / "two").glob("predictions-rank*.jsonl")) == \
        ["predictions-rank0.jsonl", "predictions-rank1.jsonl"]
    assert predictions(tmp_path / "two") == predictions(tmp_path / "one")
    assert two["scores"] == one["scores"] and two["num_predictions"] == 5
