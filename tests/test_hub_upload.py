"""Uploads to a local stand-in for the Hub: the files, the model card (with the license carried from the source
checkpoint or given), the printed repo URL, and no local path in anything uploaded."""

import json
import logging
import shutil
from pathlib import Path

import pytest
from local_hub import LocalHub, card_metadata

from dreamllm.cli import main as cli_main
from dreamllm.conversion import push_folder_to_hub
from dreamllm.hub_files import hub_model_id
from dreamllm.pipelines.figures import PARITY, SPEED, table_row
from dreamllm.pipelines.hub import pipeline_model_card
from dreamllm.testing import tiny_pipeline
from dreamllm.training import apply_lora, push_adapter_to_hub


def test_hub_model_id_keeps_repo_ids_and_drops_local_paths(tmp_path):
    assert hub_model_id("meta-llama/Llama-2-7b-hf") == "meta-llama/Llama-2-7b-hf"
    for local in (str(tmp_path), "./converted", "../base", "~/models/x", None, "a/b/c"):
        assert hub_model_id(local) is None


def test_pipeline_card_declares_license_base_model_and_the_remote_code_loading():
    card = str(pipeline_model_card("me/dreamllm", license="llama2", base_model="lmsys/vicuna-7b-v1.1"))
    metadata = card_metadata(card)
    assert metadata["library_name"] == "diffusers" and metadata["pipeline_tag"] == "image-text-to-text"
    assert metadata["license"] == "llama2" and metadata["base_model"] == "lmsys/vicuna-7b-v1.1"
    assert 'DiffusionPipeline.from_pretrained("me/dreamllm", trust_remote_code=True)' in card
    assert "pip install ." in card


def test_converted_folder_uploads_in_one_commit_with_a_card_and_no_local_path(tmp_path, monkeypatch, capsys):
    folder = tmp_path / "converted"
    tiny_pipeline().save_pretrained(folder)
    LocalHub.install(monkeypatch)
    url = push_folder_to_hub(folder, "me/dreamllm-tiny", license="apache-2.0")
    assert url == "https://huggingface.co/me/dreamllm-tiny"
    assert f"Uploaded converted to {url}" in capsys.readouterr().out
    uploaded_files = {str(path.relative_to(folder)) for path in folder.rglob("*") if path.is_file()}
    assert set(LocalHub.uploads) == uploaded_files | {"README.md"}
    assert "dreamllm_loader.py" in LocalHub.uploads
    assert LocalHub.card_metadata()["license"] == "apache-2.0"
    for name, content in LocalHub.uploads.items():
        if not name.endswith(".safetensors"):
            assert str(tmp_path).encode() not in content, name


def test_pipeline_push_prints_the_repo_url_and_declares_the_license(monkeypatch, capsys):
    LocalHub.install(monkeypatch)
    commit = tiny_pipeline().push_to_hub("me/dreamllm-tiny", license="llama2")
    assert commit.repo_url == "https://huggingface.co/me/dreamllm-tiny"
    assert "Uploaded DreamLLMPipeline to https://huggingface.co/me/dreamllm-tiny" in capsys.readouterr().out
    assert {"model_index.json", "unet/config.json", "README.md"} <= set(LocalHub.uploads)
    assert LocalHub.card_metadata()["license"] == "llama2"


def test_adapter_push_prints_the_repo_url_and_declares_the_license(monkeypatch, capsys):
    LocalHub.install(monkeypatch)
    commit = push_adapter_to_hub(apply_lora(tiny_pipeline().model), "me/dreamllm-lora", license="apache-2.0")
    assert commit.repo_url == "https://huggingface.co/me/dreamllm-lora"
    assert "Uploaded the LoRA adapter to https://huggingface.co/me/dreamllm-lora" in capsys.readouterr().out
    assert {"adapter_config.json", "adapter_model.safetensors", "README.md"} <= set(LocalHub.uploads)
    assert LocalHub.card_metadata()["license"] == "apache-2.0"


@pytest.fixture()
def licensed_source(official_tiny, tmp_path) -> list[str]:
    """`dreamllm convert` arguments for a copy of the official-tiny checkpoint whose README declares `llama2`."""
    source = tmp_path / "DreamLLM-tiny"
    shutil.copytree(official_tiny / "checkpoint", source)
    (source / "README.md").write_text("---\nlicense: llama2\ntags:\n- dreamllm\n---\n# DreamLLM tiny\n")
    return ["convert", "--input", str(source), "--vision-config", str(official_tiny / "upstream" / "clip-vit-tiny"),
            "--diffusion-config", str(official_tiny / "upstream" / "sd-tiny"), "--push-to-hub", "me/dreamllm-tiny"]


def uploaded_license() -> str | None:
    return LocalHub.card_metadata().get("license")


def test_convert_carries_the_source_license_to_the_card(licensed_source, tmp_path, monkeypatch, caplog):
    LocalHub.install(monkeypatch)
    with caplog.at_level(logging.WARNING):
        assert cli_main([*licensed_source, "--output", str(tmp_path / "converted")]) == 0
    assert uploaded_license() == "llama2"
    assert "# DreamLLM tiny" not in LocalHub.card()  # the source's card is not re-uploaded
    assert "license" not in caplog.text


def test_explicit_license_overrides_the_sources_with_a_warning(licensed_source, tmp_path, monkeypatch, caplog):
    LocalHub.install(monkeypatch)
    with caplog.at_level(logging.WARNING):
        assert cli_main([*licensed_source, "--output", str(tmp_path / "converted"), "--license", "apache-2.0"]) == 0
    assert uploaded_license() == "apache-2.0"
    assert "'apache-2.0'" in caplog.text and "'llama2'" in caplog.text


def test_config_license_is_used_when_the_source_has_no_card(licensed_source, tmp_path, monkeypatch):
    LocalHub.install(monkeypatch)
    source = Path(licensed_source[2])
    (source / "README.md").unlink()
    config = json.loads((source / "config.json").read_text())
    (source / "config.json").write_text(json.dumps({**config, "license": "cc-by-nc-4.0"}))
    assert cli_main([*licensed_source, "--output", str(tmp_path / "converted")]) == 0
    assert uploaded_license() == "cc-by-nc-4.0"


def test_converted_card_states_the_dtype_cast_and_the_measured_figures(licensed_source, tmp_path, monkeypatch):
    LocalHub.install(monkeypatch)
    assert cli_main([*licensed_source, "--output", str(tmp_path / "converted"), "--dtype", "bfloat16"]) == 0
    card, metadata = LocalHub.card(), LocalHub.card_metadata()
    assert metadata["dreamllm"]["conversion"] == {"source_dtype": "float32", "dtype": "bfloat16"}
    assert "the weights were cast from float32 to bfloat16" in card
    for check, figure in PARITY:
        assert table_row(check, figure) in card.splitlines()
    for what, figure in SPEED:
        assert f"- {what}: {figure}" in card.splitlines()


def test_a_kept_dtype_is_stated_as_kept(licensed_source, tmp_path, monkeypatch):
    LocalHub.install(monkeypatch)
    assert cli_main([*licensed_source, "--output", str(tmp_path / "converted")]) == 0
    assert "the weights were kept in float32, the dtype they were stored in" in LocalHub.card()
    assert LocalHub.card_metadata()["dreamllm"]["conversion"] == {"source_dtype": "float32", "dtype": "float32"}


@pytest.fixture(scope="module")
def training_run(tmp_path_factory) -> list[str]:
    """`dreamllm train` arguments for one step on toy documents from a tiny saved pipeline."""
    from dreamllm import toy_world

    root = tmp_path_factory.mktemp("training")
    tiny_pipeline(0).save_pretrained(root / "base")
    data = toy_world.write_dataset(root, "document", 2, seed=0)
    return ["train", "--model", str(root / "base"), "--data", f"{data}@2", "--max-steps", "1", "--batch-size", "2",
            "--gradient-accumulation-steps", "1", "--learning-rate", "1e-4", "--seed", "3", "--save-steps", "1"]


def assert_no_local_path(uploads: dict, *folders: Path):
    for name, content in uploads.items():
        if not name.endswith(".safetensors"):
            for folder in folders:
                assert str(folder).encode() not in content, name


@pytest.mark.usefixtures("single_thread")
def test_train_pushes_the_pipeline_with_its_training_settings(training_run, tmp_path, monkeypatch, capsys):
    LocalHub.install(monkeypatch)
    output = tmp_path / "run"
    assert cli_main([*training_run, "--output", str(output), "--push-to-hub", "me/dreamllm-trained",
                     "--license", "mit"]) == 0
    url = "https://huggingface.co/me/dreamllm-trained"
    assert f"Uploaded the trained DreamLLMPipeline to {url}" in capsys.readouterr().out
    assert {"model_index.json", "model.safetensors", "unet/config.json", "dreamllm_loader.py"} <= set(LocalHub.uploads)
    assert not [name for name in LocalHub.uploads if name.startswith("checkpoint-")]  # the Trainer's checkpoints stay
    metadata = LocalHub.card_metadata()
    assert metadata["license"] == "mit" and metadata["library_name"] == "diffusers"
    settings = metadata["dreamllm"]["training"]
    assert settings == {**settings, "stage": 2, "steps": 1, "learning_rate": 1e-4, "batch_size_per_device": 2,
                        "gradient_accumulation_steps": 1, "precision": "fp32", "saved_dtype": "float32", "seed": 3,
                        "world_size": 1, "engine": "a single process", "data": ["jsonl:document.jsonl@2"]}
    assert "lora_rank" not in settings
    assert "| gradient accumulation steps | 1 |" in LocalHub.card()
    assert 'DreamLLMPipeline.from_pretrained("me/dreamllm-trained")' in LocalHub.card()
    assert_no_local_path(LocalHub.uploads, tmp_path, Path(training_run[2]).parent)
    # the card saved beside the trained model states the same settings
    assert card_metadata((output / "README.md").read_text())["dreamllm"]["training"] == settings


@pytest.mark.usefixtures("single_thread")
def test_train_pushes_a_lora_adapter_with_its_rank_and_the_base_license(training_run, tmp_path, monkeypatch, capsys):
    LocalHub.install(monkeypatch)
    base = tmp_path / "licensed-base"
    shutil.copytree(training_run[2], base)
    (base / "README.md").write_text("---\nlicense: llama2\n---\n# base\n")
    arguments = [*training_run[:2], str(base), *training_run[3:]]
    assert cli_main([*arguments, "--output", str(tmp_path / "adapter"), "--lora", "--lora-rank", "4",
                     "--push-to-hub", "me/dreamllm-lora"]) == 0
    assert "Uploaded the trained LoRA adapter to https://huggingface.co/me/dreamllm-lora" in capsys.readouterr().out
    assert {"adapter_config.json", "adapter_model.safetensors"} <= set(LocalHub.uploads)
    metadata = LocalHub.card_metadata()
    assert metadata["license"] == "llama2" and metadata["library_name"] == "peft"
    assert metadata["dreamllm"]["training"]["lora_rank"] == 4 and metadata["dreamllm"]["training"]["stage"] == 2
    assert "| lora rank | 4 |" in LocalHub.card()
    assert_no_local_path(LocalHub.uploads, tmp_path, Path(training_run[2]).parent)


def test_a_bad_push_repo_id_stops_training_before_it_starts(training_run, tmp_path, capsys):
    assert cli_main([*training_run, "--output", str(tmp_path / "run"), "--push-to-hub", "not a repo"]) == 2
    assert "not a repo" in capsys.readouterr().err and not (tmp_path / "run").exists()
