"""Atomic folder replacement: every interruption point of a write or a `--force` replacement is repaired by the next
write, leftovers of killed runs are removed, and folders get the permissions of a plain `mkdir`."""

import os
from pathlib import Path

import pytest

from dreamllm.file_utils import atomic_directory, recover_directory, replace_directory, sibling


def write_model(folder: Path, text: str):
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "config.json").write_text(text)


def model_text(folder: Path) -> str:
    return (folder / "config.json").read_text()


def hidden_entries(parent: Path) -> list[str]:
    return sorted(path.name for path in parent.iterdir() if path.name.startswith("."))


@pytest.mark.parametrize(
    "crash_after_renames, expected",
    [
        (0, "old"),  # nothing renamed: a staging folder is not known to be complete, so it is discarded
        (1, "new"),  # staging renamed to .new: complete, so it is moved in
        (2, "new"),  # old moved to .old, output missing: the complete new folder is moved in (the reported case)
        (3, "new"),  # new in place, killed while removing .old
    ],
)
def test_an_interrupted_replacement_is_completed_by_the_next_write(tmp_path, monkeypatch, crash_after_renames, expected):
    target = tmp_path / "model"
    write_model(target, "old")
    staging = sibling(target, ".partial")
    write_model(staging, "new")
    renames = []
    real_replace = os.replace

    def crashing_replace(source, destination):
        if len(renames) == crash_after_renames:
            raise KeyboardInterrupt("killed")
        renames.append((source, destination))
        real_replace(source, destination)

    def crashing_rmtree(*args, **kwargs):  # removes nothing: the process dies first
        if len(renames) == crash_after_renames:
            raise KeyboardInterrupt("killed")

    monkeypatch.setattr(os, "replace", crashing_replace)
    monkeypatch.setattr("shutil.rmtree", crashing_rmtree)
    with pytest.raises(KeyboardInterrupt):
        replace_directory(staging, target)
    monkeypatch.undo()

    recover_directory(target)
    assert model_text(target) == expected
    assert hidden_entries(tmp_path) == []


def test_a_killed_write_leaves_the_old_model_and_its_staging_folder_is_removed(tmp_path):
    target = tmp_path / "model"
    write_model(target, "old")
    with pytest.raises(RuntimeError):
        with atomic_directory(target) as staging:
            write_model(staging, "half")
            raise RuntimeError("disk full")
    assert model_text(target) == "old" and hidden_entries(tmp_path) == []

    write_model(sibling(target, ".partial"), "killed mid-write")  # what a SIGKILL leaves
    with atomic_directory(target) as staging:
        assert not any(staging.iterdir())
        write_model(staging, "new")
    assert model_text(target) == "new" and hidden_entries(tmp_path) == []


def test_folders_get_the_permissions_of_mkdir(tmp_path):
    previous = os.umask(0o022)
    try:
        with atomic_directory(tmp_path / "out" / "model") as staging:
            write_model(staging, "new")
        plain = tmp_path / "plain"
        plain.mkdir()
    finally:
        os.umask(previous)
    mode = (tmp_path / "out" / "model").stat().st_mode & 0o777
    assert mode == plain.stat().st_mode & 0o777 == 0o755


def test_unrelated_folders_are_not_replaced(tmp_path):
    target = tmp_path / "photos"
    target.mkdir()
    (target / "holiday.jpg").write_bytes(b"jpeg")
    with pytest.raises(FileExistsError, match="does not hold a saved model"):
        with atomic_directory(target):
            pass
    with pytest.raises(FileExistsError, match="--force"):
        with atomic_directory(tmp_path / "photos" / "holiday.jpg", overwrite=False):
            pass
    assert (target / "holiday.jpg").read_bytes() == b"jpeg" and hidden_entries(tmp_path) == []
