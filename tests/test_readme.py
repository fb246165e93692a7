"""The README's Python blocks that use the built-in toy model run as pasted.

A block is one that loads `DreamLLMPipeline.from_pretrained()` with no name or `TOY_MODEL_PATH`. Each runs as
written, with only the diffusion steps and the decoding length cut down (on the pipeline's methods, not in the text)
so the test takes seconds.
"""

import functools
import re
from pathlib import Path

import pytest

from dreamllm import DreamLLMPipeline

README = Path(__file__).resolve().parents[1] / "README.md"
PYTHON_BLOCK = re.compile(r"```python\n(.*?)```", re.DOTALL)
TOY_MODEL_LOAD = re.compile(r"from_pretrained\((\)|TOY_MODEL_PATH)")
FAST = {"num_inference_steps": 2, "max_new_tokens": 24}


def toy_model_blocks() -> list[str]:
    return [block for block in PYTHON_BLOCK.findall(README.read_text()) if TOY_MODEL_LOAD.search(block)]


def faster(method, names):
    """`method` with the `names` of `FAST` forced to their small values."""

    @functools.wraps(method)
    def call(self, *args, **kwargs):
        return method(self, *args, **{**kwargs, **{name: FAST[name] for name in names}})

    return call


@pytest.fixture()
def fast_pipeline(monkeypatch):
    monkeypatch.setattr(DreamLLMPipeline, "__call__", faster(DreamLLMPipeline.__call__, FAST))
    monkeypatch.setattr(DreamLLMPipeline, "text_to_image", faster(DreamLLMPipeline.text_to_image,
                                                                  ["num_inference_steps"]))


def test_readme_has_toy_model_blocks():
    assert toy_model_blocks(), "no README block uses the built-in model any more"


@pytest.mark.parametrize("block", toy_model_blocks(), ids=lambda block: block.splitlines()[0][:40])
def test_readme_block_runs_as_pasted(block, fast_pipeline, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    exec(compile(block, str(README), "exec"), {"__name__": "__readme__"})
