import os
from pathlib import Path

import pytest
import torch

import dreamllm  # noqa: F401  (registers the Auto classes)
from dreamllm.testing import tiny_model_and_processor

REPO_ROOT = Path(__file__).resolve().parents[1]
OFFICIAL_TINY = Path(os.environ.get("DREAMLLM_OFFICIAL_TINY", REPO_ROOT.parent / "shared" / "fixtures" / "official-tiny"))


@pytest.fixture(autouse=True, scope="session")
def _deterministic_cpu():
    torch.set_num_threads(min(2, torch.get_num_threads()))


@pytest.fixture(scope="module")
def single_thread():
    """One intra-op thread for a module's tests: tiny models train fastest so, above all on a shared machine."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="session")
def official_tiny() -> Path:
    """The tiny checkpoint in the original release format, with golden outputs of the original implementation."""
    if not (OFFICIAL_TINY / "checkpoint" / "config.json").is_file():
        pytest.skip(f"official-tiny fixture not found at {OFFICIAL_TINY} (set DREAMLLM_OFFICIAL_TINY)")
    return OFFICIAL_TINY


@pytest.fixture()
def tiny():
    """A fresh tiny model and processor (seed 0)."""
    return tiny_model_and_processor(seed=0)
