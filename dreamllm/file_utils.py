"""Writing model folders atomically: a folder appears complete or not at all.

A folder `out` is written in `.out.partial` beside it. Once complete, the staging folder is renamed `.out.new`, the old
`out` (if any) `.out.old`, and `.out.new` becomes `out`; `.out.old` is then removed. A crash at any point leaves
folders from which [`recover_directory`] (run before every new write of `out`) completes the replacement or rolls it
back: an interrupted write is discarded, a complete new folder is moved in, the old one restored only if no complete
new one exists. Folders are created with `mkdir`, so they get the permissions of the process's umask.
[`remove_local_origins`] keeps the paths of this machine out of what is written.
"""

import json
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

MODEL_FOLDER_MARKERS = ("model_index.json", "config.json", "adapter_config.json")
STAGING, COMPLETE, RETIRED = ".partial", ".new", ".old"


def sibling(target: Path, suffix: str) -> Path:
    """The hidden folder `.<name><suffix>` beside `target` (`suffix` is one of `.partial`, `.new`, `.old`)."""
    return target.parent / f".{target.name}{suffix}"


@contextmanager
def atomic_directory(target: str | os.PathLike, overwrite: bool = True) -> Iterator[Path]:
    """
    Yields an empty staging folder beside `target`; when the block succeeds the staging folder becomes `target`,
    when it raises the staging folder is removed and `target` is left as it was.

    An existing `target` is replaced only when `overwrite` is true and it is empty or holds a saved model (a
    `model_index.json`, `config.json` or `adapter_config.json`), so unrelated files are never deleted. A replacement
    of `target` interrupted earlier (a killed process) is completed or rolled back first (see [`recover_directory`]).

    Raises:
        `FileExistsError`: when `target` exists and may not be replaced.
    """
    target = Path(target).absolute()
    recover_directory(target)
    check_replaceable(target, overwrite)
    staging = staging_folder(target)
    staging.mkdir(parents=True)
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
    """
    Moves the complete folder `source` to `target`, swapping out an existing `target` (removed only once the new one is
    in place). Every step is a rename within `target`'s parent, so a crash between steps is repaired by
    [`recover_directory`].
    """
    complete, retired = sibling(target, COMPLETE), sibling(target, RETIRED)
    shutil.rmtree(complete, ignore_errors=True)
    os.replace(source, complete)
    if target.exists():
        shutil.rmtree(retired, ignore_errors=True)
        os.replace(target, retired)
    os.replace(complete, target)
    shutil.rmtree(retired, ignore_errors=True)


def recover_directory(target: str | os.PathLike):
    """
    Repairs what an interrupted write or replacement of `target` left beside it: the staging folder of a write that
    never finished is removed; a complete new folder (`.<name>.new`) becomes `target`; an old folder (`.<name>.old`)
    is restored when `target` is missing and nothing newer is complete, and removed otherwise. Does nothing when no
    write of `target` was interrupted.
    """
    target = Path(target).absolute()
    shutil.rmtree(staging_folder(target), ignore_errors=True)
    complete, retired = sibling(target, COMPLETE), sibling(target, RETIRED)
    if complete.is_dir():
        if target.exists():
            shutil.rmtree(retired, ignore_errors=True)
            os.replace(target, retired)
        os.replace(complete, target)
    elif retired.is_dir() and not target.exists():
        os.replace(retired, target)
    shutil.rmtree(retired, ignore_errors=True)


def staging_folder(target: str | os.PathLike) -> Path:
    """The staging folder of `target`: beside it, at the same path on every process."""
    target = Path(target).absolute()
    return sibling(target, STAGING)


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
            recover_directory(target / entry.name)
            replace_directory(entry, target / entry.name)
        else:
            os.replace(entry, target / entry.name)


def write_file_atomically(target: str | os.PathLike, write: Callable[[Path], None]):
    """
    Calls `write(path)` on a temporary file beside `target`, then renames it to `target`: readers see the old file
    or the complete new one, never a part. The temporary file is removed when `write` raises.
    """
    target = Path(target)
    descriptor, temporary = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".partial")
    os.close(descriptor)
    try:
        write(Path(temporary))
        os.chmod(temporary, 0o666 & ~current_umask())
        os.replace(temporary, target)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise


def current_umask() -> int:
    """The process's umask (read by setting and restoring it)."""
    umask = os.umask(0)
    os.umask(umask)
    return umask


def is_local_path(value: str) -> bool:
    """Whether `value` names a place on this machine (an absolute path, `~/...`, or an existing relative path)."""
    path = Path(value).expanduser()
    return path.is_absolute() or path.exists()


def remove_local_origins(folder: str | os.PathLike):
    """
    Drops the `_name_or_path` entries that name a local folder from the JSON files under `folder`: diffusers writes
    where each component was loaded from, which would put a path of this machine into a saved model. A Hub repo id
    is kept. Rewritten files keep diffusers' layout (sorted keys, two-space indent).
    """
    for path in sorted(Path(folder).rglob("*.json")):
        text = path.read_text(encoding="utf-8")
        if '"_name_or_path"' not in text:
            continue
        config = json.loads(text)
        origin = config.get("_name_or_path") if isinstance(config, dict) else None
        if isinstance(origin, str) and is_local_path(origin):
            del config["_name_or_path"]
            path.write_text(json.dumps(config, indent=2, sort_keys=True) + "\n", encoding="utf-8")
