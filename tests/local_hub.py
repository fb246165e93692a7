"""A local stand-in for the Hugging Face Hub (`huggingface_hub.HfApi`), for the upload tests."""

from pathlib import Path

import yaml
from huggingface_hub import CommitInfo, RepoUrl

UPLOAD_MODULE = "dreamllm.pipelines.hub.HfApi"


class LocalHub:
    """Stands in for `huggingface_hub.HfApi`: keeps what the last commit uploaded (bytes per path in the repo) and
    the options of the calls."""

    uploads: dict = {}
    calls: list = []

    def __init__(self, token=None):
        self.token = token

    def create_repo(self, repo_id, **kwargs):
        LocalHub.calls.append(("create_repo", repo_id, {**kwargs, "token": self.token}))
        return RepoUrl(f"https://huggingface.co/{repo_id}")

    def create_commit(self, repo_id, operations, commit_message, create_pr=False):
        LocalHub.calls.append(("create_commit", repo_id, {"commit_message": commit_message, "create_pr": create_pr}))
        LocalHub.uploads = {operation.path_in_repo: read(operation.path_or_fileobj) for operation in operations}
        oid = "0" * 40
        return CommitInfo(commit_url=f"https://huggingface.co/{repo_id}/commit/{oid}", commit_message=commit_message,
                          commit_description="", oid=oid)

    @classmethod
    def install(cls, monkeypatch) -> type["LocalHub"]:
        """Makes every DreamLLM upload go to this stand-in, emptied."""
        cls.uploads, cls.calls = {}, []
        monkeypatch.setattr(UPLOAD_MODULE, cls)
        return cls

    @classmethod
    def card(cls) -> str:
        return cls.uploads["README.md"].decode()

    @classmethod
    def card_metadata(cls) -> dict:
        return card_metadata(cls.card())


def read(source) -> bytes:
    """The bytes of a `CommitOperationAdd` source: a file path or the bytes themselves."""
    return source if isinstance(source, bytes) else Path(source).read_bytes()


def card_metadata(card: str) -> dict:
    """The YAML front matter of a model card."""
    return yaml.safe_load(card.split("---")[1])
