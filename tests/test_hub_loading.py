"""Saved, converted and trained folders load through the generic Hugging Face entry points with trust_remote_code.

Each check runs in a fresh interpreter that never imports `dreamllm` itself: only the folder's `dreamllm_loader.py`
does, as on a machine where a user found the repo on the Hub.
"""

import json
import subprocess
from pathlib import Path
import sys
import textwrap

import numpy as np
import pytest
import torch
from PIL import Image

from dreamllm.conversion import convert_original_checkpoint
from dreamllm.hub_files import LOADER_MODULE
from dreamllm.testing import tiny_pipeline

ENTRY_POINTS = textwrap.dedent(
    """
    import json, sys
    from diffusers import DiffusionPipeline
    from transformers import (AutoConfig, AutoModel, AutoModelForCausalLM, AutoModelForImageTextToText,
                              AutoProcessor)

    folder = sys.argv[1]
    report = {"imported_first": "dreamllm" in sys.modules}
    for entry_point in (AutoConfig, AutoModel, AutoModelForCausalLM, AutoModelForImageTextToText, AutoProcessor,
                        DiffusionPipeline):
        report[entry_point.__name__] = type(entry_point.from_pretrained(folder, trust_remote_code=True)).__name__
    print(json.dumps(report))
    """
)
WITHOUT_PACKAGE = textwrap.dedent(
    """
    import sys

    class HideDreamLLM:
        def find_spec(self, name, path=None, target=None):
            if name.split(".")[0] == "dreamllm":
                raise ModuleNotFoundError(f"No module named {name!r}", name=name)

    sys.meta_path.insert(0, HideDreamLLM())
    from transformers import AutoModelForCausalLM
    try:
        AutoModelForCausalLM.from_pretrained(sys.argv[1], trust_remote_code=True)
    except ImportError as error:
        print(error)
    """
)
WITHOUT_TRUST = textwrap.dedent(
    """
    import sys
    from transformers import AutoProcessor
    try:
        print(type(AutoProcessor.from_pretrained(sys.argv[1])).__name__)
    except ValueError as error:
        print(error)
    """
)
EXPECTED_CLASSES = {
    "imported_first": False,
    "AutoConfig": "DreamLLMConfig",
    "AutoModel": "DreamLLMModel",
    "AutoModelForCausalLM": "DreamLLMForCausalLM",
    "AutoModelForImageTextToText": "DreamLLMForCausalLM",
    "AutoProcessor": "DreamLLMProcessor",
    "DiffusionPipeline": "DreamLLMPipeline",
}


def run_fresh(script: str, folder) -> str:
    """The last line `script` prints in a fresh interpreter, given `folder` as its argument."""
    result = subprocess.run([sys.executable, "-c", script, str(folder)], capture_output=True, text=True, check=True)
    return result.stdout.strip().splitlines()[-1]


@pytest.fixture(scope="module")
def saved_pipeline(tmp_path_factory):
    folder = tmp_path_factory.mktemp("hub") / "pipeline"
    tiny_pipeline().save_pretrained(folder)
    return folder


def test_saved_folder_carries_a_loader_that_only_imports_the_package(saved_pipeline):
    loader = (saved_pipeline / f"{LOADER_MODULE}.py").read_text()
    assert "from dreamllm import" in loader and "class " not in loader and len(loader.splitlines()) < 25
    config = json.loads((saved_pipeline / "config.json").read_text())
    assert config["auto_map"]["AutoModelForImageTextToText"] == f"{LOADER_MODULE}.DreamLLMForCausalLM"
    for name in ("processor_config.json", "tokenizer_config.json"):
        assert json.loads((saved_pipeline / name).read_text())["auto_map"] == {
            "AutoProcessor": f"{LOADER_MODULE}.DreamLLMProcessor"}
    model_index = json.loads((saved_pipeline / "model_index.json").read_text())
    assert model_index["_class_name"] == [LOADER_MODULE, "DreamLLMPipeline"]


def test_every_entry_point_loads_the_dreamllm_classes_in_a_fresh_process(saved_pipeline):
    assert json.loads(run_fresh(ENTRY_POINTS, saved_pipeline)) == EXPECTED_CLASSES


def test_loader_without_the_package_says_how_to_install_it(saved_pipeline):
    message = run_fresh(WITHOUT_PACKAGE, saved_pipeline)
    assert "needs the `dreamllm` package" in message and "pip install ." in message


def test_auto_processor_without_trust_remote_code_fails_instead_of_returning_a_tokenizer(saved_pipeline):
    assert "trust_remote_code=True" in run_fresh(WITHOUT_TRUST, saved_pipeline)


RESAVE_AFTER_REMOTE_LOAD = """
import sys
from transformers import AutoModelForCausalLM, AutoProcessor
folder, target = sys.argv[1], sys.argv[1] + "-resaved"
AutoModelForCausalLM.from_pretrained(folder, trust_remote_code=True).save_pretrained(target)
AutoProcessor.from_pretrained(folder, trust_remote_code=True).save_pretrained(target)
print(target)
"""


def test_saving_after_a_remote_code_load_copies_no_source_file_and_still_loads(saved_pipeline):
    resaved = Path(run_fresh(RESAVE_AFTER_REMOTE_LOAD, saved_pipeline))
    assert sorted(path.name for path in resaved.glob("*.py")) == [f"{LOADER_MODULE}.py"]
    loaded = run_fresh(
        "import sys; from transformers import AutoModelForCausalLM as M, AutoProcessor as P; "
        "print(type(M.from_pretrained(sys.argv[1], trust_remote_code=True)).__name__, "
        "type(P.from_pretrained(sys.argv[1], trust_remote_code=True)).__name__)",
        resaved,
    )
    assert loaded == "DreamLLMForCausalLM DreamLLMProcessor"


def test_saved_folder_still_loads_with_dreamllm_pipeline(saved_pipeline):
    from dreamllm import DreamLLMPipeline

    assert isinstance(DreamLLMPipeline.from_pretrained(saved_pipeline), DreamLLMPipeline)


def test_converted_folder_loads_through_the_entry_points(official_tiny, tmp_path):
    folder = convert_original_checkpoint(official_tiny / "checkpoint", tmp_path / "converted")
    assert json.loads(run_fresh(ENTRY_POINTS, folder)) == EXPECTED_CLASSES


def test_diffusers_cli_run_saves_the_images_of_every_document(saved_pipeline, tmp_path):
    """`diffusers-cli run` loads the folder with trust_remote_code and saves `images`: every document's, in order."""
    from dreamllm import DreamLLMPipeline
    from dreamllm.pipelines import document_images

    dream_start = json.loads((saved_pipeline / "config.json").read_text())["dream_start_token_id"]
    arguments = {"prompt": ["Draw", "Draw two"], "num_inference_steps": 1, "max_new_tokens": 8, "max_images": 2,
                 "sequence_bias": [[[dream_start], 50.0]]}
    output_folder = tmp_path / "outputs"
    subprocess.run(
        [sys.executable, "-m", "diffusers.commands.diffusers_cli", "run", "--model", str(saved_pipeline),
         "--trust-remote-code", "--seed", "0", "--pipeline-kwargs", json.dumps(arguments),
         "--output", f"{output_folder}/"],
        capture_output=True, text=True, check=True,
    )
    pipe = DreamLLMPipeline.from_pretrained(saved_pipeline)
    pipe.set_progress_bar_config(disable=True)
    documents = pipe(**arguments, generator=torch.Generator().manual_seed(0)).documents
    expected = [np.asarray(image) for document in documents for image in document_images(document)]
    saved = sorted(output_folder.glob("*.png"))
    assert [path.name for path in saved] == [f"{index:04d}.png" for index in range(4)] and len(expected) == 4
    for path, image in zip(saved, expected):
        assert np.abs(np.asarray(Image.open(path)).astype(int) - image.astype(int)).max() <= 1
