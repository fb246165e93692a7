"""Loading damaged DreamLLM checkpoints gives errors that name the file or tensor; missing weights get their module's
own initialization when the loader is asked to initialize them."""

import copy
import shutil

import pytest
import torch
from safetensors.torch import load_file, save_file

from dreamllm import DreamLLMForCausalLM
from dreamllm.modeling_dreamllm.loading_checks import CheckpointError
from dreamllm.testing import tiny_model_and_processor


@pytest.fixture(scope="module")
def saved_model(tmp_path_factory):
    model, _ = tiny_model_and_processor(seed=0)
    folder = tmp_path_factory.mktemp("saved")
    model.save_pretrained(folder)
    return model, folder


def rewrite_weights(folder, change):
    path = folder / "model.safetensors"
    weights = load_file(path)
    change(weights)
    save_file(weights, path, metadata={"format": "pt"})


def truncate(folder):
    path = folder / "model.safetensors"
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


def drop_dream_projector(folder):
    rewrite_weights(folder, lambda weights: weights.pop("model.dream_projector.weight"))


def add_foreign_tensor(folder):
    rewrite_weights(folder, lambda weights: weights.update({"model.foreign.weight": torch.zeros(2)}))


def reshape_dream_projector(folder):
    rewrite_weights(folder, lambda weights: weights.update({"model.dream_projector.weight": torch.zeros(3, 3)}))


@pytest.mark.parametrize(
    "damage, message",
    [
        (truncate, r"model\.safetensors in .* cannot be read .*truncated"),
        (drop_dream_projector, r"missing 1 tensor\(s\): model\.dream_projector\.weight"),
        (add_foreign_tensor, r"tensor\(s\) the model does not have: model\.foreign\.weight"),
        (reshape_dream_projector, r"model\.safetensors: tensor model\.dream_projector\.weight has shape \[3, 3\]"),
    ],
    ids=["truncated file", "missing tensor", "unexpected tensor", "wrong shape"],
)
def test_a_damaged_checkpoint_is_refused_naming_what_is_wrong(saved_model, tmp_path, damage, message):
    _, folder = saved_model
    damaged = tmp_path / "damaged"
    shutil.copytree(folder, damaged)
    damage(damaged)
    with pytest.raises(CheckpointError, match=message):
        DreamLLMForCausalLM.from_pretrained(damaged)


def test_output_loading_info_loads_an_incomplete_checkpoint_and_reports_it(saved_model, tmp_path):
    _, folder = saved_model
    damaged = tmp_path / "damaged"
    shutil.copytree(folder, damaged)
    drop_dream_projector(damaged)
    model, loading_info = DreamLLMForCausalLM.from_pretrained(damaged, output_loading_info=True)
    assert list(loading_info["missing_keys"]) == ["model.dream_projector.weight"]
    assert model.model.dream_projector.weight.shape == (model.config.condition_dim, model.config.text_config.hidden_size)


def test_a_complete_checkpoint_loads_unchanged(saved_model):
    model, folder = saved_model
    reloaded = DreamLLMForCausalLM.from_pretrained(folder)
    for name, tensor in model.state_dict().items():
        assert torch.equal(reloaded.state_dict()[name], tensor), name


def test_missing_vision_weights_get_clips_own_initialization(saved_model):
    model, _ = saved_model
    initialized = DreamLLMForCausalLM.from_pretrained(None, config=copy.deepcopy(model.config), state_dict={})
    vision_config = model.config.vision_config
    factor = vision_config.initializer_factor
    out_std = vision_config.hidden_size**-0.5 * factor
    in_std = out_std * (2 * vision_config.num_hidden_layers) ** -0.5  # CLIP's attention initialization
    for layer in initialized.model.vision_tower.encoder.layers:
        assert layer.self_attn.q_proj.weight.std().item() == pytest.approx(in_std, rel=0.35)
        assert layer.self_attn.out_proj.weight.std().item() == pytest.approx(out_std, rel=0.35)
