"""The README's Python blocks that use the built-in toy model run as pasted, and its figures are those the model
cards quote (`dreamllm.pipelines.figures`).

A block is one that loads `DreamLLMPipeline.from_pretrained()` with no name or `TOY_MODEL_PATH`. Each runs as
written, with only the diffusion steps and the decoding length cut down (on the pipeline's methods, not in the text)
so the test takes seconds.
"""

import functools
import re
from pathlib import Path

import pytest

from dreamllm import DreamLLMPipeline
from dreamllm.pipelines.figures import PARITY, SPEED, table_row

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


def readme_section(heading: str) -> str:
    """The text of the README's `## heading` section, without bold markers."""
    text = README.read_text().split(f"\n## {heading}\n", 1)[1]
    return text.split("\n## ", 1)[0].replace("**", "")


def test_the_parity_figures_cards_quote_are_the_readmes_table():
    rows = [line for line in readme_section("Numerical parity with the original implementation").splitlines()
            if line.startswith("| ") and not line.startswith("| check ")]
    assert rows == [table_row(check, figure) for check, figure in PARITY]


def test_the_speed_figures_cards_quote_are_in_the_readmes_performance_section():
    performance = readme_section("Performance")
    for _, figure in SPEED:
        assert figure in performance
