"""DreamLLMPipeline.from_pretrained honours diffusers' loading options (dtype per component, variant, device_map,
low_cpu_mem_usage, quantization_config) for a folder and a Hub id alike, refuses what it does not support by name,
and save_pretrained writes the variant, shards and format it is asked for."""

import json
import shutil

import pytest
import torch
from diffusers import UNet2DConditionModel

import dreamllm.pipelines.pipeline_dreamllm as pipeline_module
from dreamllm import DreamLLMPipeline
from dreamllm.testing import tiny_pipeline

pytestmark = pytest.mark.usefixtures("single_thread")


@pytest.fixture(scope="module")
def original():
    return tiny_pipeline(seed=1)


@pytest.fixture(scope="module")
def saved(original, tmp_path_factory):
    folder = tmp_path_factory.mktemp("loading") / "pipeline"
    original.save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def saved_variant(original, tmp_path_factory):
    """The tiny pipeline in float16 under the variant "fp16", sharded into several files per component."""
    folder = tmp_path_factory.mktemp("loading") / "variant"
    tiny_pipeline(seed=1).to(torch.float16).save_pretrained(folder, variant="fp16", max_shard_size="100KB")
    return folder


def weights_of(pipe) -> dict[str, dict[str, torch.Tensor]]:
    return {name: getattr(pipe, name).state_dict() for name in ("model", "unet", "vae")}


def assert_same_weights(pipe, other, dtype=None):
    for name, weights in weights_of(pipe).items():
        for key, value in weights.items():
            expected = weights_of(other)[name][key]
            torch.testing.assert_close(value, expected.to(dtype or expected.dtype), rtol=0, atol=0, msg=f"{name}.{key}")


def dtypes(pipe) -> dict[str, torch.dtype]:
    return {name: getattr(pipe, name).dtype for name in ("model", "unet", "vae")}


@pytest.mark.parametrize(
    "dtype, expected",
    [
        ({"model": torch.bfloat16, "default": torch.float16},
         {"model": torch.bfloat16, "unet": torch.float16, "vae": torch.float16}),
        ({"model": torch.bfloat16}, {"model": torch.bfloat16, "unet": torch.float32, "vae": torch.float32}),
        ({"unet": torch.bfloat16, "default": torch.float32},
         {"model": torch.float32, "unet": torch.bfloat16, "vae": torch.float32}),
        (torch.bfloat16, {"model": torch.bfloat16, "unet": torch.bfloat16, "vae": torch.bfloat16}),
    ],
)
def test_dtype_one_or_per_component(saved, dtype, expected):
    assert dtypes(DreamLLMPipeline.from_pretrained(saved, dtype=dtype)) == expected


def test_without_dtype_every_component_loads_in_its_saved_dtype(saved_variant, tmp_path):
    bf16 = tmp_path / "bf16"
    tiny_pipeline(seed=1).to(torch.bfloat16).save_pretrained(bf16)
    assert set(dtypes(DreamLLMPipeline.from_pretrained(bf16)).values()) == {torch.bfloat16}
    assert set(dtypes(DreamLLMPipeline.from_pretrained(saved_variant, variant="fp16")).values()) == {torch.float16}


def test_variant_and_shards_are_written_and_load_back(saved_variant):
    model_files = sorted(path.name for path in saved_variant.glob("model*"))
    assert "model.safetensors.index.fp16.json" in model_files and "model.safetensors" not in model_files
    assert len([name for name in model_files if name.startswith("model.fp16-")]) > 1
    for name in ("unet", "vae"):
        files = sorted(path.name for path in (saved_variant / name).glob("*.safetensors"))
        assert len(files) > 1 and all(file.startswith("diffusion_pytorch_model.fp16-") for file in files)
    loaded = DreamLLMPipeline.from_pretrained(saved_variant, variant="fp16", dtype=torch.float32)
    assert_same_weights(loaded, tiny_pipeline(seed=1).to(torch.float16).to(torch.float32))


def test_variant_only_where_a_component_has_it(original, saved, tmp_path):
    """As in diffusers: components with the variant load it, the others their plain weights."""
    folder = tmp_path / "mixed"
    folder.mkdir()
    for path in saved.iterdir():
        (folder / path.name).symlink_to(path)
    (folder / "unet").unlink()
    tiny_pipeline(seed=2).unet.save_pretrained(folder / "unet", variant="ema")
    original.unet.save_pretrained(folder / "unet")
    loaded = DreamLLMPipeline.from_pretrained(folder, variant="ema")
    expected_unet = UNet2DConditionModel.from_pretrained(folder / "unet", variant="ema")
    assert all(torch.equal(value, expected_unet.state_dict()[key]) for key, value in loaded.unet.state_dict().items())
    assert all(torch.equal(value, original.model.state_dict()[key]) for key, value in loaded.model.state_dict().items())


def test_missing_variant_raises_like_diffusers(saved):
    with pytest.raises(ValueError, match=r"You are trying to load the model files of the `variant=fp16`, but no such "
                                         r"modeling files are available"):
        DreamLLMPipeline.from_pretrained(saved, variant="fp16")


@pytest.mark.parametrize("device_map", ["cpu", "balanced"])
def test_device_map_places_every_component(original, saved, device_map):
    pipe = DreamLLMPipeline.from_pretrained(saved, device_map=device_map)
    assert {getattr(pipe, name).device.type for name in ("model", "unet", "vae")} == {"cpu"}
    assert_same_weights(pipe, original)
    assert pipe.hf_device_map == ("cpu" if device_map == "cpu" else None)  # "balanced" without accelerators: none
    pipe.reset_device_map()
    assert pipe.hf_device_map is None


def test_low_cpu_mem_usage_either_way_loads_the_same_weights(original, saved):
    assert_same_weights(DreamLLMPipeline.from_pretrained(saved, low_cpu_mem_usage=False), original)
    assert_same_weights(DreamLLMPipeline.from_pretrained(saved, low_cpu_mem_usage=True), original)


@pytest.mark.parametrize(
    "arguments, error, message",
    [
        ({"custom_pipeline": "x", "not_an_option": 1}, TypeError,
         "unsupported argument\\(s\\): custom_pipeline, not_an_option"),
        ({"use_onnx": True}, TypeError, "unsupported argument\\(s\\): use_onnx"),
        ({"dtype": "float16"}, TypeError, "dtype must be a torch.dtype or a dict"),
        ({"dtype": {"text_encoder": torch.float16}}, ValueError, "dtype names unknown component\\(s\\) text_encoder"),
        ({"dtype": torch.float16, "torch_dtype": torch.float16}, TypeError, "dtype or torch_dtype, not both"),
        ({"device_map": "auto"}, ValueError, "device_map 'auto' is not supported; use one of balanced"),
        ({"device_map": "cpu", "low_cpu_mem_usage": False}, ValueError, "low_cpu_mem_usage=False cannot be combined"),
        ({"max_memory": {"cpu": "1GB"}}, ValueError, "max_memory bounds the devices of a device_map"),
        ({"quantization_config": {"load_in_8bit": True}}, TypeError, "quantization_config must be a diffusers "
                                                                    "PipelineQuantizationConfig"),
        ({"use_safetensors": False}, ValueError, "safetensors only"),
        ({"variant": "../fp16"}, ValueError, "variant must be a name"),
    ],
)
def test_unsupported_options_are_refused_by_name(saved, arguments, error, message):
    with pytest.raises(error, match=message):
        DreamLLMPipeline.from_pretrained(saved, **arguments)


def test_save_refuses_other_formats(original, tmp_path):
    with pytest.raises(ValueError, match="safetensors only"):
        original.save_pretrained(tmp_path / "pickled", safe_serialization=False)
    assert not (tmp_path / "pickled").exists()


def test_hub_id_takes_the_same_options_and_downloads_with_only_the_download_ones(saved_variant, monkeypatch):
    calls = []

    def snapshot_download(repo_id, **kwargs):
        calls.append((repo_id, kwargs))
        return str(saved_variant)

    monkeypatch.setattr(pipeline_module, "snapshot_download", snapshot_download)
    pipe = DreamLLMPipeline.from_pretrained(
        "someone/dreamllm-tiny", variant="fp16", dtype={"model": torch.bfloat16, "default": torch.float32},
        device_map="cpu", low_cpu_mem_usage=True, revision="main", token="hf_test", local_files_only=True,
    )
    assert calls == [("someone/dreamllm-tiny", {"revision": "main", "token": "hf_test", "local_files_only": True})]
    assert dtypes(pipe) == {"model": torch.bfloat16, "unet": torch.float32, "vae": torch.float32}
    assert json.loads((saved_variant / "model_index.json").read_text())["_class_name"] == ["dreamllm_loader", "DreamLLMPipeline"]
    with pytest.raises(TypeError, match="unsupported argument\\(s\\): proxy"):
        DreamLLMPipeline.from_pretrained("someone/dreamllm-tiny", proxy="http://x")
    assert len(calls) == 1  # refused before any download


@pytest.mark.parametrize("option, expected", [([], torch.bfloat16), (["--dtype", "float32"], torch.float32)])
def test_generate_command_loads_the_saved_dtype_or_the_one_asked_for(tmp_path, monkeypatch, option, expected):
    from dreamllm.cli import main

    folder = tmp_path / "bf16"
    tiny_pipeline(seed=1).to(torch.bfloat16).save_pretrained(folder)
    loaded = []
    load = DreamLLMPipeline.from_pretrained.__func__
    monkeypatch.setattr(DreamLLMPipeline, "from_pretrained",
                        classmethod(lambda cls, *args, **kwargs: loaded.append(load(cls, *args, **kwargs)) or loaded[-1]))
    code = main(["generate", "Hi", "--model", str(folder), "--output", str(tmp_path / "out"), "--steps", "1",
                 "--max-new-tokens", "2", "--max-images", "0", *option])
    assert code == 0 and set(dtypes(loaded[0]).values()) == {expected}


def test_generate_command_refuses_an_unknown_dtype(capsys):
    from dreamllm.cli import main

    with pytest.raises(SystemExit) as exit_:
        main(["generate", "Hi", "--dtype", "float8"])
    assert exit_.value.code == 2 and "argument --dtype: invalid choice: 'float8'" in capsys.readouterr().err


def truncate(relative_path):
    def damage(folder):
        path = folder / relative_path
        path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])

    return damage


def write(relative_path, text):
    return lambda folder: (folder / relative_path).write_text(text)


def remove(relative_path):
    return lambda folder: shutil.rmtree(folder / relative_path) if (folder / relative_path).is_dir() else (
        folder / relative_path).unlink()


@pytest.mark.parametrize(
    "damage, error, message",
    [
        (truncate("model.safetensors"), ValueError, r"model.safetensors is damaged \(a truncated or corrupt"),
        (truncate("unet/diffusion_pytorch_model.safetensors"), ValueError,
         r"unet/diffusion_pytorch_model.safetensors is damaged"),
        (remove("unet/diffusion_pytorch_model.safetensors"), FileNotFoundError,
         r"unet holds no \*.safetensors weights for the unet component"),
        (remove("model.safetensors"), FileNotFoundError, r"holds no \*.safetensors weights for the model component"),
        (remove("unet"), FileNotFoundError, r"has no unet/ folder: a saved DreamLLMPipeline holds unet/, vae/ and "
                                            r"scheduler/"),
        (remove("vae/config.json"), FileNotFoundError, r"has no vae/ config.json in its folder"),
        (remove("scheduler"), FileNotFoundError, r"has no scheduler/ folder"),
        (write("tokenizer.json", "{not json"), ValueError, r"tokenizer.json is not valid JSON"),
        (write("unet/config.json", "{"), ValueError, r"unet/config.json is not valid JSON"),
        (write("config.json", "[]"), ValueError, r"config.json holds a JSON list, not an object"),
        (write("scheduler/scheduler_config.json", "\xff"), ValueError, r"scheduler_config.json is not valid JSON"),
    ],
    ids=["truncated-model", "truncated-unet", "unet-weights-missing", "model-weights-missing", "unet-folder-missing",
         "vae-config-missing", "scheduler-folder-missing", "broken-tokenizer", "broken-unet-config",
         "config-not-an-object", "broken-scheduler-config"],
)
def test_damaged_folders_are_refused_naming_the_file(saved, tmp_path, damage, error, message):
    folder = tmp_path / "damaged"
    shutil.copytree(saved, folder)
    damage(folder)
    with pytest.raises(error, match=message):
        DreamLLMPipeline.from_pretrained(folder)


def test_balanced_device_map_spreads_whole_components_by_size(saved, monkeypatch):
    """With two accelerators, the biggest component goes to the one with most memory, the next to the other, as
    diffusers' "balanced" assigns; a component bigger than the accelerator stays on the CPU (unassigned components load
    there)."""
    import dreamllm.pipelines.loading as loading

    folders = {"model": saved, "unet": saved / "unet", "vae": saved / "vae"}
    sizes = {name: loading.weights_size(folder, None) for name, folder in folders.items()}
    biggest, second, third = sorted(sizes, key=sizes.get, reverse=True)
    monkeypatch.setattr(loading, "get_max_memory", lambda max_memory=None: {0: 10**9, 1: 10**8, "cpu": 10**10})
    devices = loading.LoadingOptions(device_map="balanced").component_devices(folders)
    assert devices[biggest] == 0 and devices[second] == 1 and devices[third] == 1
    monkeypatch.setattr(loading, "get_max_memory", lambda max_memory=None: {0: sizes[third] + 1, "cpu": 10**10})
    devices = loading.LoadingOptions(device_map="balanced").component_devices(folders)
    assert [devices.get(name, "cpu") for name in (biggest, second, third)] == ["cpu", "cpu", 0]
