"""Uploading a converted folder to the Hugging Face Hub."""

import os

from huggingface_hub import HfApi


def push_folder_to_hub(
    folder: str | os.PathLike,
    repo_id: str,
    *,
    commit_message: str = "Upload DreamLLM",
    private: bool | None = None,
    token: str | None = None,
) -> str:
    """
    Uploads every file of `folder` (a converted DreamLLM) to the model repo `repo_id`, creating the repo if needed.
    The folder is uploaded as written, so nothing is loaded into memory. Returns the URL of the commit.
    """
    api = HfApi(token=token)
    api.create_repo(repo_id, private=private, exist_ok=True)
    commit = api.upload_folder(repo_id=repo_id, folder_path=folder, commit_message=commit_message)
    return commit.commit_url
