"""LoRA with PEFT: targets only the language model, trains the DreamLLM modules and the special-token rows, and the
adapter saves, loads (PeftModel, load_adapter), merges, runs inside DreamLLMPipeline and uploads with a model card."""

from types import SimpleNamespace

import pytest
import torch
from local_hub import LocalHub
from peft import PeftModel

from dreamllm import DreamLLMPipeline
from dreamllm.testing import tiny_model_and_processor, tiny_pipeline
from dreamllm.training import (
    JsonlDocumentDataset,
    apply_lora,
    build_trainer,
    dreamllm_training_arguments,
    push_adapter_to_hub,
)

LORA_LAYERS = {"q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"}

pytestmark = pytest.mark.usefixtures("single_thread")


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A LoRA adapter trained for a few steps on toy documents, saved by the trainer."""
    from dreamllm import toy_world

    root = tmp_path_factory.mktemp("lora")
    tiny_pipeline(0).save_pretrained(root / "base")
    pipeline = DreamLLMPipeline.from_pretrained(root / "base")
    dataset = JsonlDocumentDataset(toy_world.write_dataset(root, "document", 6, seed=0), pipeline.processor)
    args = dreamllm_training_arguments(
        root / "run", max_steps=3, per_device_train_batch_size=2, save_strategy="no", disable_tqdm=True,
        learning_rate=1e-2,
    )
    trainer = build_trainer(pipeline, dataset, args, stage=3, lora=True)
    trainer.train()
    trainer.save_pretrained(root / "adapter")
    model = trainer.model.eval()
    inputs = pipeline.processor(text="a red cat <dream>", return_tensors="pt")
    with torch.no_grad():
        outputs = model(**inputs)
    return SimpleNamespace(model=model, base=root / "base", folder=root / "adapter", inputs=inputs, outputs=outputs)


def assert_same_outputs(model, trained, atol=0.0):
    with torch.no_grad():
        outputs = model.eval()(**trained.inputs)
    torch.testing.assert_close(outputs.logits, trained.outputs.logits, rtol=0, atol=atol)
    torch.testing.assert_close(outputs.dream_conditions, trained.outputs.dream_conditions, rtol=0, atol=atol)


def test_lora_targets_only_the_language_model():
    model, processor = tiny_model_and_processor()
    peft_model = apply_lora(model)
    lora_modules = [name for name, module in peft_model.named_modules() if hasattr(module, "lora_A")]
    assert len(lora_modules) == len(LORA_LAYERS) * model.config.text_config.num_hidden_layers
    assert all(".language_model.layers." in name and name.rsplit(".", 1)[-1] in LORA_LAYERS for name in lora_modules)
    trainable = {name for name, parameter in peft_model.named_parameters() if parameter.requires_grad}
    assert not any("vision_tower" in name for name in trainable)
    for module in ("dream_queries", "vision_projector", "dream_projector"):
        assert any(f"{module}.modules_to_save" in name for name in trainable), module
    special_ids = sorted(model.config.special_token_ids.values())
    for layer in (peft_model.get_input_embeddings(), peft_model.get_output_embeddings()):
        assert layer.token_adapter.token_indices["default"] == special_ids


def test_training_changes_the_special_token_rows_only(trained):
    merged = PeftModel.from_pretrained(tiny_model_and_processor()[0], trained.folder).merge_and_unload()
    base = tiny_model_and_processor()[0]
    special_ids = sorted(base.config.special_token_ids.values())
    for name in ("model.language_model.embed_tokens.weight", "lm_head.weight"):
        changed = (merged.state_dict()[name] != base.state_dict()[name]).any(dim=1).nonzero().flatten().tolist()
        assert changed and set(changed) <= set(special_ids), name
    torch.testing.assert_close(merged.model.vision_tower.state_dict(), base.model.vision_tower.state_dict())
    assert not torch.equal(merged.model.dream_queries.weight, base.model.dream_queries.weight)


def test_adapter_folder_holds_adapter_processor_and_card(trained):
    files = {path.name for path in trained.folder.iterdir()}
    assert {"adapter_config.json", "adapter_model.safetensors", "README.md", "tokenizer.json"} <= files
    assert "model.safetensors" not in files and "unet" not in files
    card = (trained.folder / "README.md").read_text()
    assert "library_name: peft" in card and "- dreamllm" in card and 'from_pretrained("path/to/base-dreamllm")' in card
    assert str(trained.base) not in card and str(trained.folder.parent) not in card  # no local path is published
    assert f'load_adapter("{trained.folder.name}")' in card  # the folder it was saved to, not the staging folder


def test_adapter_loads_with_peft_and_with_load_adapter_and_merges(trained):
    assert_same_outputs(PeftModel.from_pretrained(tiny_model_and_processor()[0], trained.folder), trained)
    model = tiny_model_and_processor()[0]
    model.load_adapter(str(trained.folder))
    assert_same_outputs(model, trained)
    merged = PeftModel.from_pretrained(tiny_model_and_processor()[0], trained.folder).merge_and_unload()
    assert not any("lora" in name or "modules_to_save" in name for name, _ in merged.named_parameters())
    assert_same_outputs(merged, trained, atol=1e-5)


def test_adapter_works_inside_the_pipeline(trained):
    def image(pipeline):
        generator = torch.Generator().manual_seed(0)
        return pipeline.text_to_image("a red cat", num_inference_steps=2, generator=generator, output_type="np").images

    with_adapter = tiny_pipeline(0)
    with_adapter.model.load_adapter(str(trained.folder))
    merged = tiny_pipeline(0)
    merged.model = PeftModel.from_pretrained(merged.model, trained.folder).merge_and_unload()
    adapted = image(with_adapter)
    assert not torch.allclose(torch.from_numpy(adapted), torch.from_numpy(image(tiny_pipeline(0))))
    torch.testing.assert_close(torch.from_numpy(adapted), torch.from_numpy(image(merged)), rtol=0, atol=1e-4)


def test_push_to_hub_uploads_the_adapter_with_a_model_card(trained, monkeypatch):
    hub = LocalHub.install(monkeypatch)
    commit = push_adapter_to_hub(trained.model, "someone/dreamllm-lora", private=True, token="hf_test")
    assert commit.commit_url.startswith("https://huggingface.co/someone/dreamllm-lora")
    assert [call[0] for call in hub.calls] == ["create_repo", "create_commit"]
    assert hub.calls[0][2] == {"private": True, "exist_ok": True, "token": "hf_test"}
    assert {"adapter_config.json", "adapter_model.safetensors", "README.md"} <= hub.uploads.keys()
    assert str(trained.base).encode() not in hub.uploads["adapter_config.json"]
    card = hub.card()
    assert "library_name: peft" in card and "someone/dreamllm-lora" in card
    assert str(trained.base) not in card and "base_model" not in card.split("---")[1]  # a local base is never published


def test_transformers_adapter_api_works_on_the_installed_peft():
    """`add_adapter`, `active_adapters`, `disable_adapters` / `enable_adapters`, `set_adapter` and `delete_adapter` on
    the peft a fresh install resolves (transformers 5.24 asks for an unreleased peft 0.22 there)."""
    from peft import LoraConfig

    model, processor = tiny_model_and_processor()
    inputs = processor(text="a red cat", return_tensors="pt")
    with torch.no_grad():
        base = model(**inputs).logits
    model.add_adapter(LoraConfig(target_modules=["q_proj", "v_proj"], init_lora_weights=False), adapter_name="style")
    assert model.active_adapters() == ["style"]
    with torch.no_grad():
        adapted = model(**inputs).logits
        model.disable_adapters()
        disabled = model(**inputs).logits
        model.enable_adapters()
        enabled = model(**inputs).logits
    assert not torch.allclose(adapted, base)
    torch.testing.assert_close(disabled, base, rtol=0, atol=0)
    torch.testing.assert_close(enabled, adapted, rtol=0, atol=0)
    model.add_adapter(LoraConfig(target_modules=["k_proj"]), adapter_name="other")
    model.set_adapter("other")
    assert model.active_adapters() == ["other"]
    model.delete_adapter("other")
    assert "other" not in model.peft_config


def t2i(pipeline):
    generator = torch.Generator().manual_seed(0)
    images = pipeline.text_to_image("a red cat", num_inference_steps=2, generator=generator, output_type="pt").images
    return images


def test_pipeline_loads_fuses_unfuses_and_unloads_the_language_model_adapter(trained):
    base = t2i(tiny_pipeline(0))
    merged = tiny_pipeline(0)
    merged.model = PeftModel.from_pretrained(merged.model, trained.folder).merge_and_unload()
    expected = t2i(merged)
    pipe = tiny_pipeline(0)
    pipe.set_progress_bar_config(disable=True)
    pipe.load_lora_weights(trained.folder, adapter_name="toy")
    assert pipe.get_list_adapters() == {"model": ["toy"]} and pipe.get_active_adapters() == ["toy"]
    loaded = t2i(pipe)
    assert not torch.allclose(loaded, base)
    torch.testing.assert_close(loaded, expected, rtol=0, atol=1e-4)
    pipe.fuse_lora()
    torch.testing.assert_close(t2i(pipe), expected, rtol=0, atol=1e-4)
    pipe.unfuse_lora()
    torch.testing.assert_close(t2i(pipe), loaded, rtol=0, atol=1e-5)
    with pytest.raises(ValueError, match="'toy' is loaded already"):
        pipe.load_lora_weights(trained.folder, adapter_name="toy")
    pipe.unload_lora_weights()
    assert pipe.get_list_adapters() == {}
    torch.testing.assert_close(t2i(pipe), base, rtol=0, atol=1e-5)


def test_pipeline_loads_diffusers_unet_lora_and_weighs_it(tmp_path):
    from diffusers import StableDiffusionPipeline
    from peft import LoraConfig
    from peft.utils import get_peft_model_state_dict

    reference = tiny_pipeline(0)
    reference.unet.add_adapter(LoraConfig(r=4, target_modules=["to_q", "to_k", "to_v", "to_out.0"],
                                          init_lora_weights=False), adapter_name="style")
    StableDiffusionPipeline.save_lora_weights(
        tmp_path, unet_lora_layers=get_peft_model_state_dict(reference.unet, adapter_name="style"),
        unet_lora_adapter_metadata=reference.unet.peft_config["style"].to_dict(),
    )
    assert (tmp_path / "pytorch_lora_weights.safetensors").is_file()
    base = t2i(tiny_pipeline(0))
    pipe = tiny_pipeline(0)
    pipe.load_lora_weights(tmp_path, adapter_name="style")
    assert pipe.get_list_adapters() == {"unet": ["style"]}
    loaded = t2i(pipe)
    assert not torch.allclose(loaded, base)
    torch.testing.assert_close(loaded, t2i(reference), rtol=0, atol=1e-5)
    pipe.set_adapters("style", adapter_weights=0.0)
    torch.testing.assert_close(t2i(pipe), base, rtol=0, atol=1e-5)
    pipe.set_adapters(["style"], adapter_weights=[1.0])
    pipe.fuse_lora(components=["unet"])
    torch.testing.assert_close(t2i(pipe), loaded, rtol=0, atol=1e-4)
    pipe.unfuse_lora(components=["unet"])
    pipe.unload_lora_weights()
    torch.testing.assert_close(t2i(pipe), base, rtol=0, atol=1e-5)


@pytest.mark.parametrize(
    "call, error, message",
    [
        (lambda pipe, folder: pipe.load_lora_weights(folder), FileNotFoundError, "holds no LoRA adapter"),
        (lambda pipe, folder: pipe.set_adapters("missing"), ValueError, "No adapter named missing is loaded"),
        (lambda pipe, folder: pipe.fuse_lora(components=["vae"]), ValueError, "LoRA components are model, unet; got vae"),
    ],
)
def test_lora_misuse_is_reported_clearly(tmp_path, call, error, message):
    with pytest.raises(error, match=message):
        call(tiny_pipeline(0), tmp_path)


@pytest.fixture()
def plain_adapter(tmp_path):
    """A language-model LoRA adapter with random (non-zero) weights and nothing else, saved by transformers."""
    from peft import LoraConfig

    model, _ = tiny_model_and_processor(0)
    model.add_adapter(LoraConfig(r=4, target_modules=LANGUAGE_MODEL_TARGETS, init_lora_weights=False), adapter_name="plain")
    model.save_pretrained(tmp_path / "plain")
    return tmp_path / "plain"


LANGUAGE_MODEL_TARGETS = r"model\.language_model\.layers\.\d+\.self_attn\.(q|v)_proj"


def test_adapter_weights_and_fuse_scale_weigh_the_language_model_lora(plain_adapter):
    base = t2i(tiny_pipeline(0))
    pipe = tiny_pipeline(0)
    pipe.load_lora_weights(plain_adapter, adapter_name="plain")
    full = t2i(pipe)
    pipe.set_adapters("plain", adapter_weights=0.0)
    torch.testing.assert_close(t2i(pipe), base, rtol=0, atol=1e-6)
    pipe.set_adapters("plain", adapter_weights=0.5)
    half = t2i(pipe)
    assert not torch.allclose(half, base) and not torch.allclose(half, full)
    pipe.set_adapters("plain")
    pipe.fuse_lora(lora_scale=0.5)
    torch.testing.assert_close(t2i(pipe), half, rtol=0, atol=1e-4)


def test_load_lora_weights_from_a_hub_id_downloads_the_adapter(plain_adapter, monkeypatch):
    import dreamllm.pipelines.pipeline_dreamllm as pipeline_module

    calls = []
    monkeypatch.setattr(pipeline_module, "snapshot_download",
                        lambda repo_id, **kwargs: calls.append((repo_id, kwargs)) or str(plain_adapter))
    pipe = tiny_pipeline(0)
    pipe.load_lora_weights("someone/dreamllm-lora", revision="main")
    assert calls == [("someone/dreamllm-lora", {"revision": "main"})]
    assert pipe.get_list_adapters() == {"model": ["default"]}
