"""No path of this machine in any file a save writes: configs, model index, processor files, safetensors headers."""

import json
import re
import struct
import sys
import tempfile
from pathlib import Path

import pytest

from dreamllm import DreamLLMForCausalLM, DreamLLMPipeline, DreamLLMProcessor
from dreamllm.testing import tiny_pipeline

REPO_ROOT = Path(__file__).resolve().parents[1]
TOY_MODEL = REPO_ROOT / "dreamllm" / "toy_model"
ABSOLUTE_PATH = re.compile(r"^(~|/|[A-Za-z]:[\\/])[^/\\\s]+[/\\]")


def readable_text(path: Path) -> str | None:
    """The text of a saved file: a safetensors file's JSON header, a text file's content, nothing for other binaries."""
    data = path.read_bytes()
    if path.suffix == ".safetensors":
        (header_size,) = struct.unpack("<Q", data[:8])
        return data[8 : 8 + header_size].decode("utf-8")
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        return None


def json_strings(value):
    """Every string (keys included) of a parsed JSON value."""
    if isinstance(value, str):
        yield value
    elif isinstance(value, dict):
        for key, item in value.items():
            yield key
            yield from json_strings(item)
    elif isinstance(value, list):
        for item in value:
            yield from json_strings(item)


def local_paths(folder: Path, *places: Path) -> list[str]:
    """`file: path` for each mention of `places` (and of the usual folders of this machine) or absolute JSON path."""
    places = {str(place) for place in (*places, REPO_ROOT, Path.home(), Path(sys.prefix), Path(tempfile.gettempdir()))}
    found = []
    for path in sorted(file for file in folder.rglob("*") if file.is_file()):
        text = readable_text(path)
        if text is None:
            continue
        found += [f"{path.relative_to(folder)}: {place}" for place in places if place in text]
        if path.suffix in (".json", ".safetensors"):
            strings = json_strings(json.loads(text))
            found += [f"{path.relative_to(folder)}: {value}" for value in strings if ABSOLUTE_PATH.match(value)]
    return found


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    """A tiny pipeline saved, then loaded from that folder and saved again (loading records where it came from)."""
    root = tmp_path_factory.mktemp("saved")
    tiny_pipeline().save_pretrained(root / "first")
    DreamLLMPipeline.from_pretrained(root / "first").save_pretrained(root / "again")
    return root


@pytest.mark.parametrize("folder", ["first", "again"])
def test_a_saved_pipeline_holds_no_local_path(saved, folder):
    assert (saved / folder / "model_index.json").is_file()
    assert local_paths(saved / folder, saved) == []


def test_a_reloaded_model_and_processor_save_no_local_path(saved, tmp_path):
    DreamLLMForCausalLM.from_pretrained(saved / "first").save_pretrained(tmp_path / "model")
    DreamLLMProcessor.from_pretrained(saved / "first").save_pretrained(tmp_path / "processor")
    assert local_paths(tmp_path, saved, tmp_path) == []


def test_the_shipped_toy_model_holds_no_local_path():
    assert (TOY_MODEL / "model_index.json").is_file()
    assert local_paths(TOY_MODEL) == []


def test_the_scan_finds_a_planted_path(saved, tmp_path):
    config = json.loads((saved / "first" / "unet" / "config.json").read_text())
    (tmp_path / "config.json").write_text(json.dumps({**config, "_name_or_path": "/somewhere/else/sft"}))
    assert local_paths(tmp_path) == ["config.json: /somewhere/else/sft"]
