"""Uploads to a local stand-in for the Hub: the files, the model card (with the license carried from the source
checkpoint or given), the printed repo URL, and no local path in anything uploaded."""

import json
import logging
import shutil
from pathlib import Path

import pytest
import yaml
from huggingface_hub import CommitInfo, RepoUrl

from dreamllm.cli import main as cli_main
from dreamllm.conversion import push_folder_to_hub
from dreamllm.hub_files import hub_model_id
from dreamllm.pipelines.hub import pipeline_model_card
from dreamllm.testing import tiny_pipeline
from dreamllm.training import apply_lora, push_adapter_to_hub


class LocalHub:
    """Stands in for `huggingface_hub.HfApi`: keeps what one commit uploads, as bytes per path in the repo."""

    uploads: dict = {}

    def __init__(self, token=None):
        self.token = token

    def create_repo(self, repo_id, **kwargs):
        return RepoUrl(f"https://huggingface.co/{repo_id}")

    def create_commit(self, repo_id, operations, commit_message):
        LocalHub.uploads = {operation.path_in_repo: read(operation.path_or_fileobj) for operation in operations}

    def upload_folder(self, repo_id, folder_path, commit_message, create_pr=False):
        folder = Path(folder_path)
        LocalHub.uploads = {path.relative_to(folder).as_posix(): path.read_bytes()
                            for path in folder.rglob("*") if path.is_file()}
        oid = "0" * 40
        return CommitInfo(commit_url=f"https://huggingface.co/{repo_id}/commit/{oid}", commit_message=commit_message,
                          commit_description="", oid=oid)


def read(source) -> bytes:
    """The bytes of a `CommitOperationAdd` source: a file path or the bytes themselves."""
    return source if isinstance(source, bytes) else open(source, "rb").read()


def card_metadata(card: str) -> dict:
    return yaml.safe_load(card.split("---")[1])


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
    monkeypatch.setattr("dreamllm.conversion.hub.HfApi", LocalHub)
    url = push_folder_to_hub(folder, "me/dreamllm-tiny", license="apache-2.0")
    assert url == "https://huggingface.co/me/dreamllm-tiny"
    assert f"Uploaded converted to {url}" in capsys.readouterr().out
    uploaded_files = {str(path.relative_to(folder)) for path in folder.rglob("*") if path.is_file()}
    assert set(LocalHub.uploads) == uploaded_files | {"README.md"}
    assert "dreamllm_loader.py" in LocalHub.uploads
    assert card_metadata(LocalHub.uploads["README.md"].decode())["license"] == "apache-2.0"
    for name, content in LocalHub.uploads.items():
        if not name.endswith(".safetensors"):
            assert str(tmp_path).encode() not in content, name


def test_pipeline_push_prints_the_repo_url_and_declares_the_license(monkeypatch, capsys):
    monkeypatch.setattr("dreamllm.pipelines.pipeline_dreamllm.HfApi", LocalHub)
    commit = tiny_pipeline().push_to_hub("me/dreamllm-tiny", license="llama2")
    assert commit.repo_url == "https://huggingface.co/me/dreamllm-tiny"
    assert "Uploaded DreamLLMPipeline to https://huggingface.co/me/dreamllm-tiny" in capsys.readouterr().out
    assert {"model_index.json", "unet/config.json", "README.md"} <= set(LocalHub.uploads)
    assert card_metadata(LocalHub.uploads["README.md"].decode())["license"] == "llama2"


def test_adapter_push_prints_the_repo_url_and_declares_the_license(monkeypatch, capsys):
    monkeypatch.setattr("dreamllm.training.lora.HfApi", LocalHub)
    commit = push_adapter_to_hub(apply_lora(tiny_pipeline().model), "me/dreamllm-lora", license="apache-2.0")
    assert commit.repo_url == "https://huggingface.co/me/dreamllm-lora"
    assert "Uploaded the LoRA adapter to https://huggingface.co/me/dreamllm-lora" in capsys.readouterr().out
    assert {"adapter_config.json", "adapter_model.safetensors", "README.md"} <= set(LocalHub.uploads)
    assert card_metadata(LocalHub.uploads["README.md"].decode())["license"] == "apache-2.0"


@pytest.fixture()
def licensed_source(official_tiny, tmp_path) -> list[str]:
    """`dreamllm convert` arguments for a copy of the official-tiny checkpoint whose README declares `llama2`."""
    source = tmp_path / "DreamLLM-tiny"
    shutil.copytree(official_tiny / "checkpoint", source)
    (source / "README.md").write_text("---\nlicense: llama2\ntags:\n- dreamllm\n---\n# DreamLLM tiny\n")
    return ["convert", "--input", str(source), "--vision-config", str(official_tiny / "upstream" / "clip-vit-tiny"),
            "--diffusion-config", str(official_tiny / "upstream" / "sd-tiny"), "--push-to-hub", "me/dreamllm-tiny"]


def uploaded_license() -> str | None:
    return card_metadata(LocalHub.uploads["README.md"].decode()).get("license")


def test_convert_carries_the_source_license_to_the_card(licensed_source, tmp_path, monkeypatch, caplog):
    monkeypatch.setattr("dreamllm.conversion.hub.HfApi", LocalHub)
    with caplog.at_level(logging.WARNING):
        assert cli_main([*licensed_source, "--output", str(tmp_path / "converted")]) == 0
    assert uploaded_license() == "llama2"
    assert "# DreamLLM tiny" not in LocalHub.uploads["README.md"].decode()  # the source's card is not re-uploaded
    assert "license" not in caplog.text


def test_explicit_license_overrides_the_sources_with_a_warning(licensed_source, tmp_path, monkeypatch, caplog):
    monkeypatch.setattr("dreamllm.conversion.hub.HfApi", LocalHub)
    with caplog.at_level(logging.WARNING):
        assert cli_main([*licensed_source, "--output", str(tmp_path / "converted"), "--license", "apache-2.0"]) == 0
    assert uploaded_license() == "apache-2.0"
    assert "'apache-2.0'" in caplog.text and "'llama2'" in caplog.text


def test_config_license_is_used_when_the_source_has_no_card(licensed_source, tmp_path, monkeypatch):
    monkeypatch.setattr("dreamllm.conversion.hub.HfApi", LocalHub)
    source = Path(licensed_source[2])
    (source / "README.md").unlink()
    config = json.loads((source / "config.json").read_text())
    (source / "config.json").write_text(json.dumps({**config, "license": "cc-by-nc-4.0"}))
    assert cli_main([*licensed_source, "--output", str(tmp_path / "converted")]) == 0
    assert uploaded_license() == "cc-by-nc-4.0"
