"""Writing model folders atomically: a folder appears complete or not at all."""

import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

MODEL_FOLDER_MARKERS = ("model_index.json", "config.json", "adapter_config.json")


@contextmanager
def atomic_directory(target: str | os.PathLike, overwrite: bool = True) -> Iterator[Path]:
    """
    Yields an empty staging folder beside `target`; when the block succeeds the staging folder becomes `target`,
    when it raises the staging folder is removed and `target` is left as it was.

    An existing `target` is replaced only when `overwrite` is true and it is empty or holds a saved model (a
    `model_index.json`, `config.json` or `adapter_config.json`), so unrelated files are never deleted.

    Raises:
        `FileExistsError`: when `target` exists and may not be replaced.
    """
    target = Path(target).absolute()
    check_replaceable(target, overwrite)
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{target.name}.", suffix=".partial", dir=target.parent))
    try:
        yield staging
        check_replaceable(target, overwrite)
        replace_directory(staging, target)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise


def check_replaceable(target: Path, overwrite: bool):
    """Raises `FileExistsError` unless `target` is absent, or may be replaced (see `atomic_directory`)."""
    if not target.exists():
        return
    if not overwrite:
        raise FileExistsError(f"{target} already exists; pass overwrite/--force to replace it")
    if not target.is_dir():
        raise FileExistsError(f"{target} exists and is not a folder")
    if any(target.iterdir()) and not any((target / marker).is_file() for marker in MODEL_FOLDER_MARKERS):
        raise FileExistsError(f"{target} is not empty and does not hold a saved model; choose another folder")


def replace_directory(source: Path, target: Path):
    """Moves `source` to `target`, swapping out an existing `target` (removed only once the new one is in place)."""
    if not target.exists():
        os.replace(source, target)
        return
    retired = Path(tempfile.mkdtemp(prefix=f".{target.name}.", suffix=".old", dir=target.parent))
    os.replace(target, retired / target.name)
    os.replace(source, target)
    shutil.rmtree(retired, ignore_errors=True)


def staging_folder(target: str | os.PathLike) -> Path:
    """The staging folder `commit_model_files` moves from: beside `target`, at the same path on every process."""
    target = Path(target).absolute()
    return target.parent / f".{target.name}.partial"


def commit_model_files(staging: Path, target: str | os.PathLike):
    """
    Moves the entries of a completely written `staging` folder into `target`, a folder that may hold other things
    too (a Trainer's checkpoints), replacing their namesakes. The old files that make a folder loadable
    (`MODEL_FOLDER_MARKERS`) are removed first and the new ones moved last, so an interrupted commit leaves a folder
    that does not load rather than a mix of two models.
    """
    target = Path(target)
    target.mkdir(parents=True, exist_ok=True)
    for marker in MODEL_FOLDER_MARKERS:
        (target / marker).unlink(missing_ok=True)
    for entry in sorted(staging.iterdir(), key=lambda path: path.name in MODEL_FOLDER_MARKERS):
        if entry.is_dir():
            replace_directory(entry, target / entry.name)
        else:
            os.replace(entry, target / entry.name)
