"""Uploading a converted folder to the Hugging Face Hub, with its model card."""

import json
import logging
import os
from pathlib import Path

from huggingface_hub import CommitOperationAdd, HfApi, ModelCard

from dreamllm.pipelines.hub import pipeline_model_card

logger = logging.getLogger(__name__)


def push_folder_to_hub(
    folder: str | os.PathLike,
    repo_id: str,
    *,
    commit_message: str = "Upload DreamLLM",
    private: bool | None = None,
    token: str | None = None,
    license: str | None = None,
) -> str:
    """
    Uploads every file of `folder` (a converted DreamLLM) to the model repo `repo_id` in one commit, creating the repo
    if needed, with a model card (`README.md`, see `pipeline_model_card`) declaring `license`. Files are streamed
    from disk as written, so nothing is loaded into memory. Prints and returns the URL of the repo.
    """
    api = HfApi(token=token)
    repo_url = api.create_repo(repo_id, private=private, exist_ok=True)
    card = pipeline_model_card(repo_url.repo_id, license=license)
    operations = [*folder_operations(Path(folder)),
                  CommitOperationAdd(path_in_repo="README.md", path_or_fileobj=str(card).encode())]
    api.create_commit(repo_id=repo_url.repo_id, operations=operations, commit_message=commit_message)
    print(f"Uploaded {Path(folder).name} to {repo_url}")
    return str(repo_url)


def folder_operations(folder: Path) -> list[CommitOperationAdd]:
    """One upload per file of `folder` (its own `README.md` aside: the card replaces it), at its relative path."""
    return [
        CommitOperationAdd(path_in_repo=path.relative_to(folder).as_posix(), path_or_fileobj=str(path))
        for path in sorted(folder.rglob("*")) if path.is_file() and path.relative_to(folder).as_posix() != "README.md"
    ]


def source_license(source: str | os.PathLike) -> str | None:
    """
    The license a source checkpoint folder declares: `license` in the front matter of its `README.md` (its model
    card), else a `license` key in its `config.json`; `None` when neither says.
    """
    source = Path(source)
    readme, config = source / "README.md", source / "config.json"
    if readme.is_file():
        readme_license = ModelCard.load(readme).data.license
        if readme_license:
            return str(readme_license)
    if config.is_file():
        config_license = json.loads(config.read_text()).get("license")
        if config_license:
            return str(config_license)
    return None


def card_license(license: str | None, source: str | os.PathLike) -> str | None:
    """
    The license an uploaded card declares: `license` when given, else the source checkpoint's (see
    `source_license`). A given license that differs from the source's wins, with a warning naming both.
    """
    carried = source_license(source)
    if license and carried and license != carried:
        logger.warning("Declaring license %r as asked, but the source checkpoint %s declares %r",
                       license, Path(source).name, carried)
    return license or carried
