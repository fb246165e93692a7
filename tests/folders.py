"""Helpers for tests that compare what folders hold."""

from pathlib import Path


def folder_files(root: Path) -> dict[str, bytes]:
    """Every file under `root`, by its path relative to `root`, with its bytes."""
    return {path.relative_to(root).as_posix(): path.read_bytes() for path in sorted(root.rglob("*")) if path.is_file()}
