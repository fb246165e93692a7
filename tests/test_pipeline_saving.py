"""One saved folder serves every entry point: diffusers, transformers Auto classes and pipelines, and the Hub."""

import json

import numpy as np
import pytest
import torch
from folders import folder_files
from local_hub import LocalHub
from safetensors import safe_open
from transformers import AutoModelForCausalLM, AutoProcessor, pipeline

from dreamllm import DreamLLMForCausalLM, DreamLLMPipeline, DreamLLMProcessor
from dreamllm.testing import tiny_pipeline

STEPS = 2


def draw_first(pipe):
    """Generation settings that make the tiny random model draw one image first (standard `sequence_bias`)."""
    return {"sequence_bias": {(pipe.model.config.dream_start_token_id,): 50.0}, "max_images": 1,
            "max_new_tokens": 5, "num_inference_steps": STEPS}


@pytest.fixture(scope="module")
def original():
    pipe = tiny_pipeline(seed=3)
    pipe.set_progress_bar_config(disable=True)
    return pipe


@pytest.fixture(scope="module")
def saved(original, tmp_path_factory):
    folder = tmp_path_factory.mktemp("saved") / "dreamllm-tiny"
    original.save_pretrained(folder)
    return folder


def load(folder, **kwargs):
    pipe = DreamLLMPipeline.from_pretrained(folder, **kwargs)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def arrays(document):
    return [np.asarray(part) if not isinstance(part, str) else part for part in document]


def assert_same_documents(first, second):
    assert len(first) == len(second)
    for part, other in zip(arrays(first), arrays(second)):
        assert part == other if isinstance(part, str) else np.array_equal(part, other)


def test_layout_has_each_weight_once(saved):
    files = sorted(str(path.relative_to(saved)) for path in saved.rglob("*") if path.is_file())
    weights = [name for name in files if name.endswith((".safetensors", ".bin", ".pt", ".pth"))]
    assert weights == ["model.safetensors", "unet/diffusion_pytorch_model.safetensors",
                       "vae/diffusion_pytorch_model.safetensors"]
    for name in ("config.json", "generation_config.json", "processor_config.json", "tokenizer.json",
                 "tokenizer_config.json", "chat_template.jinja", "model_index.json", "scheduler/scheduler_config.json",
                 "unet/config.json", "vae/config.json"):
        assert name in files
    with safe_open(saved / "model.safetensors", "pt") as weights_file:
        assert not [key for key in weights_file.keys() if key.startswith(("unet", "vae"))]
    model_index = json.loads((saved / "model_index.json").read_text())
    assert model_index["_class_name"] == ["dreamllm_loader", "DreamLLMPipeline"]  # the custom pipeline of the folder
    assert model_index["scheduler"] == ["diffusers", "DDPMScheduler"]


def test_reload_gives_bit_identical_images_and_documents(original, saved):
    """The saved images (uint8) are identical. (Float outputs may move by ~1e-7: memory-mapped weights are aligned
    differently from freshly allocated ones, which changes some SIMD summation orders.)"""
    reloaded = load(saved)
    before = original.text_to_image("a cat", generator=torch.Generator().manual_seed(0), num_inference_steps=STEPS)
    after = reloaded.text_to_image("a cat", generator=torch.Generator().manual_seed(0), num_inference_steps=STEPS)
    assert np.array_equal(np.asarray(after.images[0]), np.asarray(before.images[0]))
    document = original("Hello", generator=torch.Generator().manual_seed(0), **draw_first(original)).documents[0]
    again = reloaded("Hello", generator=torch.Generator().manual_seed(0), **draw_first(reloaded)).documents[0]
    assert sum(not isinstance(part, str) for part in document) == 1
    assert_same_documents(document, again)


def test_transformers_entry_points_load_the_same_folder(original, saved):
    model = AutoModelForCausalLM.from_pretrained(saved)
    assert isinstance(model, DreamLLMForCausalLM)
    assert all(torch.equal(value, original.model.state_dict()[key]) for key, value in model.state_dict().items())
    assert isinstance(AutoProcessor.from_pretrained(saved), DreamLLMProcessor)
    answer = pipeline("image-text-to-text", model=str(saved))(text="Hello", max_new_tokens=3, return_full_text=False)
    assert isinstance(answer[0]["generated_text"], str)


def test_interleaved_generation_task_returns_the_pipelines_documents(original, saved):
    writer = pipeline("interleaved-generation", model=str(saved))
    writer.dreamllm_pipeline.set_progress_bar_config(disable=True)
    assert isinstance(writer.dreamllm_pipeline, DreamLLMPipeline)
    settings = draw_first(original)
    result = writer("Hello", generator=torch.Generator().manual_seed(0), **settings)
    expected = original("Hello", generator=torch.Generator().manual_seed(0), **settings)
    assert_same_documents(result["document"], expected.documents[0])
    assert result["text"] == expected.text[0] and len(result["images"]) == 1
    several = writer(["Hello", "Bye"], max_images=0, max_new_tokens=3)
    assert [item["document"] for item in several] == [original(p, max_images=0, max_new_tokens=3).documents[0]
                                                       for p in ("Hello", "Bye")]


def test_interleaved_generation_task_batches_prompts(original, saved):
    writer = pipeline("interleaved-generation", model=str(saved))
    writer.dreamllm_pipeline.set_progress_bar_config(disable=True)
    prompts = ["Hello", "Bye", "Once upon a time"]
    batched = writer(prompts, batch_size=2, max_images=0, max_new_tokens=3)
    assert [item["document"] for item in batched] == [writer(p, max_images=0, max_new_tokens=3)["document"]
                                                      for p in prompts]
    with pytest.raises(ValueError, match="one entry per prompt"):
        writer(prompts, images=[None])


def test_the_model_card_declares_only_tasks_that_load(original, saved, monkeypatch):
    LocalHub.install(monkeypatch)
    original.push_to_hub("someone/dreamllm-tiny")
    metadata = LocalHub.card_metadata()
    assert pipeline(metadata["pipeline_tag"], model=str(saved)) is not None
    for task in set(metadata["tags"]) & {"image-text-to-text", "interleaved-generation", "any-to-any"}:
        assert pipeline(task, model=str(saved)) is not None


def test_dtype_on_load_casts_every_component(saved):
    pipe = load(saved, dtype=torch.bfloat16)
    assert {pipe.model.dtype, pipe.unet.dtype, pipe.vae.dtype} == {torch.bfloat16}
    images = pipe.text_to_image("a cat", num_inference_steps=STEPS, output_type="np").images
    assert images.shape == (1, 32, 32, 3) and np.isfinite(images).all()


def test_loading_errors_name_the_problem(saved, tmp_path):
    with pytest.raises(FileNotFoundError, match="neither a folder holding a saved DreamLLM nor a Hub repo id"):
        DreamLLMPipeline.from_pretrained(tmp_path / "missing")
    with pytest.raises(FileNotFoundError, match="has no model_index.json"):
        DreamLLMPipeline.from_pretrained(tmp_path)
    broken = tmp_path / "broken"
    broken.mkdir()
    model_index = json.loads((saved / "model_index.json").read_text())
    (broken / "model_index.json").write_text(json.dumps({**model_index, "scheduler": ["diffusers", "AutoencoderKL"]}))
    with pytest.raises(ValueError, match="AutoencoderKL for scheduler, which is not a SchedulerMixin"):
        DreamLLMPipeline.from_pretrained(broken, model=object(), processor=object(), unet=object(), vae=object())


def test_a_failed_save_leaves_the_saved_folder_as_it_was(original, tmp_path, monkeypatch):
    folder = tmp_path / "model"
    original.save_pretrained(folder)
    saved = folder_files(folder)

    def disk_full(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(original.vae, "save_pretrained", disk_full)
    with pytest.raises(OSError, match="disk full"):
        original.save_pretrained(folder)
    assert folder_files(folder) == saved
    assert [path.name for path in tmp_path.iterdir()] == ["model"]  # no staging folder left


def test_push_to_hub_uploads_the_folder_with_a_model_card(original, monkeypatch):
    hub = LocalHub.install(monkeypatch)
    original.push_to_hub("someone/dreamllm-tiny", private=True)

    (_, repo_id, create_kwargs), (_, upload_repo, upload_kwargs) = hub.calls
    assert repo_id == upload_repo == "someone/dreamllm-tiny" and create_kwargs["private"] is True
    assert upload_kwargs["commit_message"] == "Upload DreamLLMPipeline"
    for name in ("README.md", "model_index.json", "config.json", "model.safetensors", "processor_config.json",
                 "tokenizer.json", "unet/diffusion_pytorch_model.safetensors",
                 "vae/diffusion_pytorch_model.safetensors", "scheduler/scheduler_config.json"):
        assert name in hub.uploads
    card, metadata = hub.card(), hub.card_metadata()
    assert metadata["library_name"] == "diffusers" and metadata["pipeline_tag"] == "image-text-to-text"
    assert {"dreamllm", "text-to-image", "image-text-to-text"} <= set(metadata["tags"])
    assert 'DreamLLMPipeline.from_pretrained("someone/dreamllm-tiny")' in card
