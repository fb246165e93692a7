"""Uploading a converted folder to the Hugging Face Hub, with its model card."""

import json
import logging
import os
from pathlib import Path

from huggingface_hub import ModelCard

from dreamllm.pipelines.hub import pipeline_model_card, upload_folder_with_card
from dreamllm.pipelines.pipeline_dreamllm import TOY_MODEL_PATH

logger = logging.getLogger(__name__)

TOY_MODEL_LICENSE = "apache-2.0"


def push_folder_to_hub(
    folder: str | os.PathLike,
    repo_id: str,
    *,
    commit_message: str = "Upload DreamLLM",
    private: bool | None = None,
    token: str | None = None,
    license: str | None = None,
    conversion: dict | None = None,
    components: dict | None = None,
) -> str:
    """
    Uploads every file of `folder` (a converted DreamLLM) to the model repo `repo_id` in one commit, creating the repo
    if needed, with a model card (`README.md`, see `pipeline_model_card`) declaring `license` and, for a converted
    original checkpoint, its `conversion` (dtype cast, parity and speed figures); for a model built from parts, its
    `components` (the new parts' settings, and that it is untrained). Files are streamed from disk as
    written, so nothing is loaded into memory. Prints and returns the URL of the repo.
    """
    commit = upload_folder_with_card(
        folder, repo_id,
        lambda repo: pipeline_model_card(repo, license=license, conversion=conversion, components=components),
        what=Path(folder).name, commit_message=commit_message, private=private, token=token,
    )  # fmt: skip
    return str(commit.repo_url)


def source_license(source: str | os.PathLike | None) -> str | None:
    """
    The license a source checkpoint folder declares: `license` in the front matter of its `README.md` (its model
    card), else a `license` key in its `config.json`; `None` when neither says (or for a Hub repo id). The built-in
    toy model (`None` or `TOY_MODEL_PATH`) is the package's own work, under the package's license.
    """
    if source is None or Path(source) == TOY_MODEL_PATH:
        return TOY_MODEL_LICENSE
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


def card_license(license: str | None, source: str | os.PathLike | None) -> str | None:
    """
    The license an uploaded card declares: `license` when given, else the source checkpoint's (see
    `source_license`). A given license that differs from the source's wins, with a warning naming both.
    """
    carried = source_license(source)
    if license and carried and license != carried:
        logger.warning("Declaring license %r as asked, but the source checkpoint %s declares %r",
                       license, Path(source).name if source else "the built-in toy model", carried)
    return license or carried
