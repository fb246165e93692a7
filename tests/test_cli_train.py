"""`dreamllm train`: full training to a pipeline folder, LoRA to an adapter folder, resumption, and user errors."""

import json

import pytest
import torch
from peft import PeftModel

from dreamllm import DreamLLMForCausalLM, DreamLLMPipeline
from dreamllm.cli import main
from dreamllm.testing import tiny_pipeline

pytestmark = pytest.mark.usefixtures("single_thread")


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    folder = tmp_path_factory.mktemp("base") / "tiny"
    tiny_pipeline(0).save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    from dreamllm import toy_world

    root = tmp_path_factory.mktemp("data")
    return {kind: toy_world.write_dataset(root, kind, 4, seed=0) for kind in ("document", "qa")}


def train(*arguments) -> int:
    return main(["train", "--batch-size", "2", "--seed", "0", "--logging-steps", "1", *map(str, arguments)])


def test_full_training_writes_a_pipeline_and_resumes(tmp_path, base, data, capsys):
    output = tmp_path / "out"
    common = ("--model", base, "--data", data["document"], "--output", output, "--save-steps", "1")
    assert train(*common, "--max-steps", "2") == 0
    captured = capsys.readouterr()
    assert "2/2" in captured.err and "'lm_loss'" in captured.out and "'diffusion_loss'" in captured.out
    assert f"Saved the trained pipeline (DreamLLMPipeline.from_pretrained) to {output}" in captured.out
    pipeline = DreamLLMPipeline.from_pretrained(output)
    initial = tiny_pipeline(0).model.model.dream_projector.weight
    assert not torch.equal(pipeline.model.model.dream_projector.weight, initial)

    (output / "checkpoint-9").mkdir()  # not a complete checkpoint (no trainer state): skipped
    (output / ".checkpoint-4.partial").mkdir()  # what a run killed while saving leaves
    assert train(*common, "--max-steps", "3", "--resume") == 0
    state = json.loads((output / "checkpoint-3" / "trainer_state.json").read_text())
    assert state["global_step"] == 3 and state["log_history"][0]["step"] == 1
    assert (output / "checkpoint-3" / "data_state-rank0.json").is_file()
    assert not (output / ".checkpoint-4.partial").exists()

    assert train(*common, "--max-steps", "3", "--resume") == 0  # at max-steps already: trains no further
    assert sorted(path.name for path in output.glob("checkpoint-*")) == [f"checkpoint-{i}" for i in (1, 2, 3, 9)]
    resumed = DreamLLMPipeline.from_pretrained(output).model.model.dream_projector.weight
    checkpoint = DreamLLMForCausalLM.from_pretrained(output / "checkpoint-3").model.dream_projector.weight
    torch.testing.assert_close(resumed, checkpoint, rtol=0, atol=0)


def test_lora_instruction_tuning_writes_an_adapter(tmp_path, base, data):
    output = tmp_path / "adapter"
    assert train("--model", base, "--data", data["qa"], "--output", output, "--stage", "3", "--lora",
                 "--max-steps", "1", "--lora-rank", "4") == 0
    model = PeftModel.from_pretrained(DreamLLMForCausalLM.from_pretrained(base), output)
    assert model.peft_config["default"].r == 4
    assert not (output / "unet").exists()


@pytest.mark.parametrize(
    "option, value, expected",
    [
        ("--max-steps", "0", "max_steps must be a positive integer, got 0"),
        ("--max-steps", "-1", "max_steps must be a positive integer, got -1"),
        ("--gradient-accumulation-steps", "0", "gradient_accumulation_steps must be a positive integer"),
        ("--batch-size", "0", "per_device_train_batch_size must be a positive integer"),
        ("--save-steps", "-5", "save_steps must be a positive integer"),
        ("--logging-steps", "0", "logging_steps must be a positive integer"),
        ("--lora-rank", "0", "lora_rank must be a positive integer"),
        ("--num-workers", "-1", "dataloader_num_workers must be a non-negative integer"),
        ("--shuffle-buffer", "0", "shuffle_buffer must be a positive integer"),
        ("--max-consecutive-skips", "0", "max_consecutive_skips must be a positive integer"),
        ("--seed", "-3", "seed must be an integer in [0, 2**32)"),
        ("--learning-rate", "nan", "learning_rate must be a finite positive number"),
        ("--learning-rate", "0", "learning_rate must be a finite positive number"),
        ("--condition-dropout", "1.5", "condition_dropout must be in [0, 1]"),
    ],
)
def test_numeric_options_are_checked_before_any_work(tmp_path, data, capsys, option, value, expected):
    assert train("--model", tmp_path / "not-loaded", "--data", data["document"], "--output", tmp_path / "out",
                 option, value) == 2
    error = capsys.readouterr().err.strip().splitlines()[-1]
    assert error.startswith("dreamllm train: error:") and expected in error
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize(
    "problem, expected",
    [
        ("missing data", "no data file"),
        ("lora in stage 1", "LoRA applies to stages 2 and 3"),
        ("malformed line", "data.jsonl:1: not a DreamLLM document"),
        ("every image missing", "data.jsonl: reader 0 of 1 skipped 5 records in a row without one usable document "
         "(missing image: 5)"),
        ("every image missing, read by a worker", "data loading failed in DataLoader worker process 0: ValueError: *"
         "data.jsonl: reader 0 of 1 skipped 5 records in a row without one usable document (missing image: 5)"),
    ],
)
def test_user_errors_are_one_line_with_status_2(tmp_path, base, data, capsys, problem, expected):
    arguments = ["--model", base, "--data", data["document"], "--output", tmp_path / "out", "--max-steps", "1"]
    if problem == "missing data":
        arguments[3] = tmp_path / "absent.jsonl"
    elif problem == "lora in stage 1":
        arguments += ["--stage", "1", "--lora"]
    elif problem.startswith("every image missing"):
        (tmp_path / "data.jsonl").write_text('{"segments": [{"text": "A cat."}, {"image": "absent.png"}]}\n')
        arguments[3] = tmp_path / "data.jsonl"
        arguments += ["--max-consecutive-skips", "5", "--num-workers", "1" if problem.endswith("worker") else "0"]
    else:
        (tmp_path / "data.jsonl").write_text('{"text": "not a document"}\n')
        arguments[3] = tmp_path / "data.jsonl"
    assert train(*arguments) == 2
    errors = [line for line in capsys.readouterr().err.splitlines() if "dreamllm train: error:" in line]
    assert len(errors) == 1 and "Traceback" not in errors[0]
    assert all(part in errors[0] for part in expected.split("*")), errors[0]  # "*": the data file's folder
