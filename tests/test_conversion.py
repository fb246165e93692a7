"""`dreamllm.conversion.convert_original_checkpoint` on the official-tiny fixture and on variants of it.

The variants are written from the fixture into temporary folders: the main weights as `pytorch_model.bin`, sharded
safetensors or a single safetensors file, bf16 copies, stale plugin paths, whole-model (FSDP) saves carrying plugin
copies. The numerical parity of the converted fixture with the original implementation is in
`test_official_parity.py`, which loads the fixture through the converter.
"""

import argparse
import json
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file, save_file
from diffusers import AutoencoderKL, UNet2DConditionModel
from local_hub import LocalHub
from transformers import AutoModelForCausalLM, AutoProcessor, pipeline
from transformers.pipelines import PIPELINE_REGISTRY

from dreamllm import DreamLLMForCausalLM, DreamLLMPipeline
from dreamllm.cli import main as cli_main
from dreamllm.conversion import convert_original_checkpoint
from dreamllm.conversion.convert import build_config, upstream_folder
from dreamllm.conversion.original import OriginalCheckpoint
from dreamllm.conversion.upstream import (
    SHIPPED_CONFIGS,
    load_diffusion_parts,
    load_vision_parts,
    resolve_upstream_folder,
)
from dreamllm.pipelines import default_scheduler

TOKENIZER_FILES = ("tokenizer.model", "tokenizer_config.json", "special_tokens_map.json", "added_tokens.json")
PLUGIN_FILES = ("clip_vision_embedding.bin", "dream_embedding.bin", "stable_diffusion_head.bin")
STALE_PATH = "/mnt/training/dreamllm/stage2/checkpoint-4000"
REPO_ROOT = Path(__file__).resolve().parents[1]

CLIP_CACHE_PATH = (
    "huggingface_cache/hub/models--openai--clip-vit-large-patch14/snapshots/8d052a0f05efbaefbc9e8786ba291cfdf93e5bff"
)
# The released 7B config.json as the original code writes it (spec section 7), with a Hub-cache path for CLIP.
RELEASED_CONFIG = {
    "architectures": ["DreamLLMForCausalMLM"], "model_type": "dreamllm", "vocab_size": 32008, "hidden_size": 4096,
    "intermediate_size": 11008, "num_hidden_layers": 32, "num_attention_heads": 32, "num_key_value_heads": 32,
    "hidden_act": "silu", "max_position_embeddings": 2048, "rms_norm_eps": 1e-06, "rope_theta": 10000.0,
    "rope_scaling": None, "attention_bias": False, "pretraining_tp": 1, "tie_word_embeddings": False,
    "bos_token_id": 1, "eos_token_id": 2, "pad_token_id": 0, "torch_dtype": "bfloat16", "loss_weight_lm": 1.0,
    "loss_weight_vm": 10.0,
    "special_tokens2ids_dict": {
        "</s>": 2, "<s>": 1, "<unk>": 0, "[PAD]": 32000,
        "additional_special_tokens": {"<im_start>": 32001, "<dream_end>": 32002, "<dream_start>": 32003,
                                      "<im_patch>": 32004, "<im_end>": 32005, "<image>": 32006, "<dream>": 32007},
    },
    "plugins_init_kwargs": {
        "clip_vision_embedding": {
            "_target_": "omni.models.dreamllm.modeling_plugins.CLIPVisionEmbedding", "projector_type": "linear",
            "projector_depth": 1, "clip_vision_model_name_or_path": CLIP_CACHE_PATH,
            "use_additional_post_layernorm": False, "select_layer": -2, "embed_hidden_size": 4096,
            "pretrained_model_name_or_path": "none",
        },
        "dream_embedding": {
            "_target_": "omni.models.dreamllm.modeling_plugins.DreamEmbedding", "num_dream_queries": 64,
            "embed_hidden_size": 4096, "pretrained_model_name_or_path": "none",
        },
        "stable_diffusion_head": {
            "_target_": "omni.models.dreamllm.modeling_plugins.StableDiffusionHead", "projector_type": "linear",
            "projector_depth": 1, "diffusion_name_or_path": "stabilityai/stable-diffusion-2-1-base",
            "embed_hidden_size": 4096, "pretrained_model_name_or_path": "none",
        },
    },
    "plugins_type": {
        "clip_vision_embedding": "embedding", "dream_embedding": "embedding", "stable_diffusion_head": "head",
    },
}  # fmt: skip


# ----------------------------------------------------------------------------------------------------------------
# Helpers: fixture variants in the original layout, and what their conversion must hold
# ----------------------------------------------------------------------------------------------------------------


def write_variant(
    official_tiny: Path,
    folder: Path,
    *,
    dtype: torch.dtype | None = None,
    main_weights: str = "model.safetensors",
    plugin_path: str | None = None,
    whole_model_save: bool = False,
) -> Path:
    """
    Writes the fixture's checkpoint to `folder` in the original layout, with the main weights as
    `model.safetensors`, `pytorch_model.bin` or `sharded` safetensors, optionally cast to `dtype`, every plugin path
    set to `plugin_path`, and (`whole_model_save`) plugin copies filled with garbage plus CLIP `position_ids` in the
    files, as FSDP full saves and other transformers versions wrote them.
    """
    source = official_tiny / "checkpoint"
    folder.mkdir(parents=True)
    for name in (*TOKENIZER_FILES, "generation_config.json"):
        shutil.copy(source / name, folder / name)
    config = json.loads((source / "config.json").read_text())
    for settings in config["plugins_init_kwargs"].values():
        settings["pretrained_model_name_or_path"] = plugin_path
    config["plugins_init_kwargs"]["clip_vision_embedding"]["clip_vision_model_name_or_path"] = str(
        official_tiny / "upstream" / "clip-vit-tiny"
    )
    config["plugins_init_kwargs"]["stable_diffusion_head"]["diffusion_name_or_path"] = str(
        official_tiny / "upstream" / "sd-tiny"
    )
    (folder / "config.json").write_text(json.dumps(config, indent=2))

    def cast(state_dict):
        return {key: value.to(dtype) if dtype else value for key, value in state_dict.items()}

    plugins = {name: cast(torch.load(source / name, weights_only=True)) for name in PLUGIN_FILES}
    main = cast(load_file(source / "model.safetensors"))
    if whole_model_save:
        plugins["clip_vision_embedding.bin"]["clip_vision_model.vision_model.embeddings.position_ids"] = torch.arange(
            257
        )[None]
        for name, prefix in zip(
            PLUGIN_FILES,
            ("model.clip_vision_embedding.", "model.dream_embedding.", "stable_diffusion_head."),
            strict=True,
        ):
            main.update({prefix + key: torch.full_like(value, 7) for key, value in plugins[name].items()})
    for name, state_dict in plugins.items():
        torch.save(state_dict, folder / name)
    write_main_weights(main, folder, main_weights)
    return folder


def write_main_weights(state_dict: dict, folder: Path, layout: str):
    if layout == "pytorch_model.bin":
        torch.save(state_dict, folder / layout)
    elif layout == "model.safetensors":
        save_file(state_dict, folder / layout, metadata={"format": "pt"})
    else:
        keys = sorted(state_dict)
        shards = {"model-00001-of-00002.safetensors": keys[::2], "model-00002-of-00002.safetensors": keys[1::2]}
        for name, shard_keys in shards.items():
            save_file({key: state_dict[key] for key in shard_keys}, folder / name, metadata={"format": "pt"})
        weight_map = {key: name for name, shard_keys in shards.items() for key in shard_keys}
        (folder / "model.safetensors.index.json").write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))


def expected_weights(checkpoint: Path) -> dict[tuple[str, str], torch.Tensor]:
    """(component, converted name) -> tensor, from the original files, by the mapping the release encodes."""
    expected = {}
    for key, value in load_file(checkpoint / "model.safetensors").items():
        if not key.endswith("rotary_emb.inv_freq"):
            expected["model", key.replace("model.", "model.language_model.", 1)] = value
    for key, value in torch.load(checkpoint / "clip_vision_embedding.bin", weights_only=True).items():
        key = key.replace("clip_vision_model.vision_model.", "model.vision_tower.")
        expected["model", key.replace("projector.projector.", "model.vision_projector.")] = value
    expected["model", "model.dream_queries.weight"] = torch.load(checkpoint / "dream_embedding.bin")["dream_queries"][0]
    for key, value in torch.load(checkpoint / "stable_diffusion_head.bin", weights_only=True).items():
        component, _, name = key.partition(".")
        if component == "projector":
            expected["model", "model.dream_projector.weight"] = value
        else:
            expected[component, name] = value
    return expected


def converted_weights(folder: Path) -> dict[tuple[str, str], torch.Tensor]:
    """(component, name) -> tensor of every weights file of a converted folder."""
    files = {"model": folder.glob("model*.safetensors"), "unet": (folder / "unet").glob("*.safetensors"),
             "vae": (folder / "vae").glob("*.safetensors")}  # fmt: skip
    return {
        (component, key): value for component, paths in files.items() for path in paths
        for key, value in load_file(path).items()
    }  # fmt: skip


def assert_weights_equal(converted: dict, expected: dict, dtype: torch.dtype = torch.float32):
    assert converted.keys() == expected.keys()
    for key, value in expected.items():
        assert converted[key].dtype == dtype, key
        assert torch.equal(converted[key], value.to(dtype)), key


def convert(checkpoint: Path, output: Path, **kwargs) -> Path:
    return convert_original_checkpoint(checkpoint, output, **kwargs)


@pytest.fixture(scope="module")
def converted(official_tiny, tmp_path_factory) -> Path:
    return convert(official_tiny / "checkpoint", tmp_path_factory.mktemp("converted") / "dreamllm")


@pytest.fixture(scope="module")
def golden(official_tiny):
    return lambda name: load_file(official_tiny / "golden" / f"{name}.safetensors")


@pytest.fixture(scope="module")
def meta(official_tiny) -> dict:
    return json.loads((official_tiny / "golden" / "meta.json").read_text())


@pytest.fixture()
def variant(official_tiny, tmp_path):
    """A function writing a fixture variant (see `write_variant`) under this test's temporary folder."""
    return lambda **kwargs: write_variant(official_tiny, tmp_path / "original", **kwargs)


# ----------------------------------------------------------------------------------------------------------------
# The converted fixture
# ----------------------------------------------------------------------------------------------------------------


def test_layout_holds_every_entry_point_and_no_pickles(converted):
    files = {str(path.relative_to(converted)) for path in converted.rglob("*") if path.is_file()}
    assert {
        "config.json", "generation_config.json", "model_index.json", "processor_config.json", "tokenizer.json",
        "tokenizer_config.json", "chat_template.jinja", "unet/config.json", "unet/diffusion_pytorch_model.safetensors",
        "vae/config.json", "vae/diffusion_pytorch_model.safetensors", "scheduler/scheduler_config.json",
    } <= files  # fmt: skip
    assert not [name for name in files if name.endswith((".bin", ".pt", ".pth", ".pkl"))]
    assert "model.safetensors" in files and not [name for name in files if name.endswith(".index.json")]
    assert not list(converted.parent.glob(".*"))  # no staging folder left behind


@pytest.mark.parametrize("dtype", ["auto", "float32", "bfloat16"])
def test_small_max_shard_size_gives_indexed_shards_that_load(converted, official_tiny, tmp_path, dtype):
    max_shard_bytes = 50_000
    output = convert(official_tiny / "checkpoint", tmp_path / "sharded", dtype=dtype, max_shard_size=max_shard_bytes)
    for folder, stem in ((output, "model"), (output / "unet", "diffusion_pytorch_model"),
                         (output / "vae", "diffusion_pytorch_model")):  # fmt: skip
        index = json.loads((folder / f"{stem}.safetensors.index.json").read_text())
        shards = sorted(path.name for path in folder.glob(f"{stem}-*.safetensors"))
        assert len(shards) > 1 and sorted(set(index["weight_map"].values())) == shards
        tensors = {name: load_file(folder / name) for name in shards}
        assert index["metadata"]["total_size"] == sum(
            value.nbytes for shard in tensors.values() for value in shard.values()
        )
        for name, shard in tensors.items():
            assert all(index["weight_map"][key] == name for key in shard)
            assert len(shard) == 1 or sum(value.nbytes for value in shard.values()) <= max_shard_bytes
    expected = {key: value.float() for key, value in converted_weights(converted).items()}
    assert_weights_equal(converted_weights(output), expected, torch.bfloat16 if dtype == "bfloat16" else torch.float32)
    pipe = DreamLLMPipeline.from_pretrained(output)
    loaded = {("model", key): value for key, value in pipe.model.state_dict().items()}
    loaded |= {("unet", key): value for key, value in pipe.unet.state_dict().items()}
    loaded |= {("vae", key): value for key, value in pipe.vae.state_dict().items()}
    assert all(torch.equal(loaded[key], value) for key, value in converted_weights(output).items())


def resave_pickle(path: Path, pickle_format: str):
    """Saves the state dict in `path` again: in the legacy (pre-zip) format, with every matrix a strided view, or with
    every tensor a view into one shared storage."""
    state_dict = torch.load(path, weights_only=True)
    if pickle_format == "legacy":
        torch.save(state_dict, path, _use_new_zipfile_serialization=False)
    elif pickle_format == "strided":
        torch.save({key: value.t().contiguous().t() if value.dim() == 2 else value for key, value in state_dict.items()},
                   path)  # fmt: skip
    else:
        flat = torch.cat([value.reshape(-1) for value in state_dict.values()])
        views, start = {}, 0
        for key, value in state_dict.items():
            views[key] = flat[start : start + value.numel()].view(value.shape)
            start += value.numel()
        torch.save(views, path)


@pytest.mark.parametrize(
    ("main_weights", "pickle_format"),
    [("model.safetensors", None), ("pytorch_model.bin", None), ("pytorch_model.bin", "legacy"),
     ("pytorch_model.bin", "strided"), ("pytorch_model.bin", "shared")],
)  # fmt: skip
def test_tensors_larger_than_a_chunk_are_copied_whole(
    variant, official_tiny, tmp_path, monkeypatch, main_weights, pickle_format
):
    """Every tensor is read and cast in chunks of `CHUNK_BYTES` (with 1000-byte chunks each spans many), from each
    kind of file: safetensors, zip pickles read at their offsets, and the pickles that are loaded whole."""
    monkeypatch.setattr("dreamllm.conversion.weights.CHUNK_BYTES", 1000)
    checkpoint = variant(dtype=torch.bfloat16, main_weights=main_weights)
    if pickle_format:
        resave_pickle(checkpoint / main_weights, pickle_format)
        resave_pickle(checkpoint / "stable_diffusion_head.bin", pickle_format)
    output = convert(checkpoint, tmp_path / "converted", dtype="float32")
    expected = expected_weights(official_tiny / "checkpoint")
    assert_weights_equal(converted_weights(output), {key: value.to(torch.bfloat16) for key, value in expected.items()})


def test_config_comes_from_the_checkpoint_and_its_upstream_repos(converted, meta):
    config = json.loads((converted / "config.json").read_text())
    token_ids = meta["special_tokens2ids_dict"]
    assert config["pad_token_id"] == token_ids["[PAD]"]
    assert config["dream_start_token_id"] == token_ids["additional_special_tokens"]["<dream_start>"]
    assert config["image_start_token_id"] == token_ids["additional_special_tokens"]["<im_start>"]
    assert (config["condition_dim"], config["num_dream_queries"], config["vision_feature_layer"]) == (32, 64, -2)
    assert (config["loss_weight_lm"], config["loss_weight_diffusion"], config["dtype"]) == (1.0, 10.0, "float32")
    assert config["text_config"]["rms_norm_eps"] == 1e-6 and config["vision_config"]["patch_size"] == 4
    assert config["architectures"] == ["DreamLLMForCausalLM"]


def test_weights_are_the_original_tensors_renamed(converted, official_tiny):
    assert_weights_equal(converted_weights(converted), expected_weights(official_tiny / "checkpoint"))


def test_scheduler_is_the_originals_ddpm(converted, meta):
    scheduler = DreamLLMPipeline.from_pretrained(converted).scheduler
    assert type(scheduler).__name__ == meta["scheduler"]["class_"]
    for key, value in meta["scheduler"]["config"].items():
        if not key.startswith("_"):
            assert scheduler.config[key] == value, key
    assert all(
        scheduler.config[key] == value for key, value in default_scheduler().config.items() if not key.startswith("_")
    )
    for steps, timesteps in meta["scheduler"]["timesteps"].items():
        scheduler.set_timesteps(int(steps))
        assert scheduler.timesteps.tolist() == timesteps


def test_saved_processor_reproduces_token_ids_and_pixels(converted, meta, official_tiny, golden):
    processor = AutoProcessor.from_pretrained(converted)
    for case in meta["tokenizer_cases"]:
        text = (
            case["text"]
            if case["text"] is not None
            else case["text_abbrev"].replace("{<im_patch> x 256}", "<im_patch>" * 256)
        )
        assert processor.tokenizer(text)["input_ids"] == case["input_ids"]
    images = [Image.open(official_tiny / "inputs" / f"image_{index}.png").convert("RGB") for index in range(2)]
    pixel_values = torch.cat(
        [processor.image_processor(image, return_tensors="pt")["pixel_values"] for image in images]
    )
    assert (pixel_values - golden("clip")["pixel_values"]).abs().max().item() <= 1e-6


def test_every_entry_point_loads_the_converted_folder(converted):
    assert type(AutoModelForCausalLM.from_pretrained(converted)).__name__ == "DreamLLMForCausalLM"
    answer = pipeline("image-text-to-text", model=str(converted))
    image = Image.fromarray(np.full((40, 30, 3), 128, dtype=np.uint8))
    assert (
        answer(images=image, text="<image> What is it?", max_new_tokens=2, return_full_text=False)[0]["generated_text"]
        is not None
    )
    if "interleaved-generation" in PIPELINE_REGISTRY.get_supported_tasks():
        assert pipeline("interleaved-generation", model=str(converted)) is not None
    assert DreamLLMPipeline.from_pretrained(converted).unet.config.cross_attention_dim == 32


@torch.no_grad()
def denoise_as_the_original(pipe: DreamLLMPipeline, conditions, unconditional, seed: int):
    """
    The original `stable_diffusion_pipeline` loop, written out: one latent draw, then per step UNet on
    `[uncond, cond]`, guidance 3.5 and a DDPM step drawing from the same generator; returns the latents of every step
    and the decoded [0, 1] images.
    """
    generator = torch.Generator().manual_seed(seed)
    pipe.scheduler.set_timesteps(10)
    latents = torch.randn((conditions.shape[0], 4, 16, 16), generator=generator)
    steps = []
    for timestep in pipe.scheduler.timesteps:
        noise = pipe.unet(
            torch.cat([latents] * 2), timestep, encoder_hidden_states=torch.cat([unconditional, conditions])
        )
        unconditional_noise, conditional_noise = noise.sample.chunk(2)
        guided = unconditional_noise + 3.5 * (conditional_noise - unconditional_noise)
        latents = pipe.scheduler.step(guided, timestep, latents, generator=generator).prev_sample
        steps.append(latents)
    images = pipe.vae.decode(latents / pipe.vae.config.scaling_factor).sample
    return torch.stack(steps), (images / 2 + 0.5).clamp(0, 1)


@torch.no_grad()
def test_converted_diffusion_components_reproduce_the_text_to_image_goldens(converted, golden, meta):
    """The converted UNet, VAE, scheduler and conditions give the original's latents at every step and its images.

    In the batch the original conditions the short, right-padded prompt at drifted positions; we condition it as
    when it is alone, so its image differs by design, and the long prompt's row must match.
    """
    pipe = DreamLLMPipeline.from_pretrained(converted, attn_implementation="eager")
    model, expected, prompts = pipe.model, golden("t2i_pipeline"), meta["t2i_condition"]
    conditions = model.get_dream_conditions(torch.tensor(prompts["p1"]["input_ids"]))
    negative = model.get_dream_conditions(torch.tensor(prompts["negative"]["input_ids"]))
    steps, images = denoise_as_the_original(
        pipe, conditions, negative, meta["t2i_pipeline"]["single_neg"]["call"]["generator_seed"]
    )
    assert (steps - expected["single_neg.latents_per_step"]).abs().max().item() <= 1e-3
    pixels = (images * 255).round().to(torch.uint8).permute(0, 2, 3, 1).int()
    assert (pixels - expected["single_neg.image_uint8"].int()).abs().max().item() <= 1

    batch = prompts["batch_right"]
    conditions = model.get_dream_conditions(torch.tensor(batch["input_ids"]), torch.tensor(batch["attention_mask"]))
    unconditional = model.get_unconditional_dream_conditions(2)
    steps, images = denoise_as_the_original(
        pipe, conditions, unconditional, meta["t2i_pipeline"]["batch"]["call"]["generator_seed"]
    )
    assert (steps[:, 1] - expected["batch.latents_per_step"][:, 1]).abs().max().item() <= 1e-3
    assert (images[1] - expected["batch.image_float"][1]).abs().max().item() <= 1e-3
    assert (images[0] - expected["batch.image_float"][0]).abs().max().item() > 1e-3


# ----------------------------------------------------------------------------------------------------------------
# Checkpoint variants
# ----------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("main_weights", "plugin_path", "whole_model_save"),
    [
        ("pytorch_model.bin", "none", False),
        ("sharded", STALE_PATH, False),
        ("pytorch_model.bin", "outputs/stage2/checkpoint-4000", True),
    ],
)
def test_main_weight_layouts_and_stale_plugin_paths(
    variant, official_tiny, tmp_path, main_weights, plugin_path, whole_model_save
):
    checkpoint = variant(main_weights=main_weights, plugin_path=plugin_path, whole_model_save=whole_model_save)
    output = convert(checkpoint, tmp_path / "converted")
    assert_weights_equal(converted_weights(output), expected_weights(official_tiny / "checkpoint"))


def test_bfloat16_checkpoint_stays_bfloat16_unless_asked(variant, official_tiny, tmp_path, golden):
    checkpoint = variant(dtype=torch.bfloat16, plugin_path=None)
    expected = expected_weights(official_tiny / "checkpoint")
    output = convert(checkpoint, tmp_path / "auto")
    assert_weights_equal(converted_weights(output), expected_weights(checkpoint), torch.bfloat16)
    model = AutoModelForCausalLM.from_pretrained(output)
    assert model.dtype == torch.bfloat16
    text = golden("text_forward")
    with torch.no_grad():
        logits = model(input_ids=text["input_ids"]).logits.float()
    assert (logits - text["logits"]).abs().max() <= 5e-2 * text["logits"].abs().max()
    upcast = convert(checkpoint, tmp_path / "float32", dtype="float32")
    converted = converted_weights(upcast)
    assert all(value.dtype == torch.float32 for value in converted.values())
    assert all(torch.equal(converted[key], value.to(torch.bfloat16).float()) for key, value in expected.items())


MEASURE_PEAK_MEMORY = """
import re, sys
from dreamllm.conversion import convert_original_checkpoint
def peak_bytes():
    return int(re.search(r"VmHWM:\\s+(\\d+) kB", open("/proc/self/status").read())[1]) * 1024
baseline = peak_bytes()
convert_original_checkpoint(sys.argv[1], sys.argv[2], dtype="float32")
print(peak_bytes() - baseline)
"""


def enlarge_vocabulary(checkpoint: Path, vocab_size: int, main_weights: str):
    """Grows the embeddings and LM head of a variant's main weights (and its config) to `vocab_size` rows."""
    config = json.loads((checkpoint / "config.json").read_text())
    state_dict = load_file(checkpoint / "model.safetensors")
    for key in ("model.embed_tokens.weight", "lm_head.weight"):
        rows = state_dict[key]
        state_dict[key] = torch.cat([rows, rows.new_zeros(vocab_size - len(rows), rows.shape[1])])
    (checkpoint / "model.safetensors").unlink()
    write_main_weights(state_dict, checkpoint, main_weights)
    (checkpoint / "config.json").write_text(json.dumps(config | {"vocab_size": vocab_size}))


@pytest.mark.skipif(not Path("/proc/self/status").is_file(), reason="reads the peak memory from /proc")
@pytest.mark.parametrize("main_weights", ["model.safetensors", "pytorch_model.bin"])
def test_casting_conversion_holds_less_than_half_the_input_file(variant, tmp_path, main_weights):
    """A bf16 checkpoint of 150 MB cast to float32 (300 MB out, one shard): the conversion process's peak resident
    memory grows by less than half the input file (it grew by 3x the file when it held a converted shard, and by
    the file's size when it memory-mapped it)."""
    checkpoint = variant(dtype=torch.bfloat16)
    enlarge_vocabulary(checkpoint, 600_000, main_weights)
    input_bytes = (checkpoint / main_weights).stat().st_size
    command = [sys.executable, "-c", MEASURE_PEAK_MEMORY, str(checkpoint), str(tmp_path / "converted")]
    growth = int(subprocess.run(command, capture_output=True, text=True, check=True).stdout.split()[-1])
    assert input_bytes > 150e6 and growth < input_bytes / 2
    assert converted_weights(tmp_path / "converted")["model", "lm_head.weight"].shape == (600_000, 64)


# ----------------------------------------------------------------------------------------------------------------
# Upstream configs
# ----------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "repo_id"),
    [
        ("openai/clip-vit-large-patch14", "openai/clip-vit-large-patch14"),
        ("huggingface_cache/hub/models--openai--clip-vit-large-patch14/snapshots/8d052a0f05efbaefbc9e8786ba291cfdf93e5bff",
         "openai/clip-vit-large-patch14"),
        ("stabilityai/stable-diffusion-2-1-base", "stabilityai/stable-diffusion-2-1-base"),
        ("/cache/models--stabilityai--stable-diffusion-2-1-base/snapshots/dcd3ee64f0c1aba2eb9e0c0c16041c6cae40d780",
         "stabilityai/stable-diffusion-2-1-base"),
    ],
)  # fmt: skip
def test_hub_ids_and_hub_cache_paths_use_the_shipped_configs(name, repo_id, tmp_path):
    assert resolve_upstream_folder(name, tmp_path / "checkpoint", "setting", "--flag") == SHIPPED_CONFIGS / repo_id


def test_unknown_upstream_names_the_setting_and_the_override(tmp_path):
    with pytest.raises(
        FileNotFoundError, match=r"plugins_init_kwargs.x.clip_vision_model_name_or_path .*--vision-config"
    ):
        resolve_upstream_folder(
            "someone/other-clip", tmp_path, "plugins_init_kwargs.x.clip_vision_model_name_or_path", "--vision-config"
        )


def parameter_count(module: torch.nn.Module) -> int:
    return sum(parameter.numel() for parameter in module.parameters())


def test_released_config_resolves_to_the_7b_model_with_the_shipped_configs(tmp_path):
    """The shipped configs rebuild the public models exactly: their parameter counts are the well-known ones."""
    (tmp_path / "config.json").write_text(json.dumps(RELEASED_CONFIG))
    checkpoint = OriginalCheckpoint(tmp_path)
    vision = load_vision_parts(upstream_folder(checkpoint, "vision", "clip_vision_model_name_or_path"))
    diffusion = load_diffusion_parts(upstream_folder(checkpoint, "diffusion", "diffusion_name_or_path"))
    config = build_config(checkpoint, vision.config.to_dict(), diffusion.unet_config)
    assert (config.num_image_tokens, config.condition_dim, config.dream_start_token_id, config.pad_token_id) == (
        256,
        1024,
        32003,
        32000,
    )
    with torch.device("meta"):
        model = DreamLLMForCausalLM(config)
        unet = UNet2DConditionModel.from_config(diffusion.unet_config)
        vae = AutoencoderKL.from_config(diffusion.vae_config)
    assert parameter_count(model.model.language_model) + parameter_count(model.lm_head) == 6_738_481_152
    assert parameter_count(model.model.vision_tower) == 303_179_776
    assert (parameter_count(unet), parameter_count(vae)) == (865_910_724, 83_653_863)
    assert unet.config.sample_size * 2 ** (len(vae.config.block_out_channels) - 1) == 512
    assert vae.config.scaling_factor == 0.18215 and unet.config.use_linear_projection
    processor = vision.image_processor
    assert (processor.size.shortest_edge, processor.crop_size.height, processor.resample) == (224, 224, 3)
    assert processor.do_convert_rgb and list(processor.image_mean) == [0.48145466, 0.4578275, 0.40821073]
    assert all(
        diffusion.scheduler.config[key] == value
        for key, value in default_scheduler().config.items()
        if not key.startswith("_")
    )


def test_every_shipped_config_is_package_data():
    patterns = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["package-data"]
    package = REPO_ROOT / "conversion"
    shipped = {
        path.relative_to(package) for pattern in patterns["dreamllm.conversion"] for path in package.glob(pattern)
    }
    files = {path.relative_to(package) for path in (package / SHIPPED_CONFIGS.name).rglob("*") if path.is_file()}
    assert shipped == files and len(files) == 5


def test_relative_upstream_paths_resolve_against_the_current_directory_first(official_tiny, tmp_path, monkeypatch):
    """The fixture names `upstream/clip-vit-tiny`: a copy under the current directory wins over the checkpoint's."""
    local_clip = tmp_path / "work" / "upstream" / "clip-vit-tiny"
    shutil.copytree(official_tiny / "upstream" / "clip-vit-tiny", local_clip)
    preprocessor = json.loads((local_clip / "preprocessor_config.json").read_text())
    (local_clip / "preprocessor_config.json").write_text(json.dumps(preprocessor | {"image_mean": [0.25, 0.5, 0.75]}))
    monkeypatch.chdir(tmp_path / "work")
    output = convert(official_tiny / "checkpoint", tmp_path / "converted")
    assert json.loads((output / "processor_config.json").read_text())["image_processor"]["image_mean"] == [
        0.25,
        0.5,
        0.75,
    ]


def test_override_folders_replace_what_the_checkpoint_names(variant, official_tiny, tmp_path):
    checkpoint = variant()
    config = json.loads((checkpoint / "config.json").read_text())
    config["plugins_init_kwargs"]["clip_vision_embedding"]["clip_vision_model_name_or_path"] = "gone/clip"
    config["plugins_init_kwargs"]["stable_diffusion_head"]["diffusion_name_or_path"] = "/gone/sd"
    (checkpoint / "config.json").write_text(json.dumps(config))
    with pytest.raises(FileNotFoundError, match="--vision-config"):
        convert(checkpoint, tmp_path / "failed")
    upstream = official_tiny / "upstream"
    output = convert(
        checkpoint,
        tmp_path / "converted",
        vision_config=upstream / "clip-vit-tiny",
        diffusion_config=upstream / "sd-tiny",
    )
    assert (output / "unet" / "diffusion_pytorch_model.safetensors").is_file()


# ----------------------------------------------------------------------------------------------------------------
# Errors
# ----------------------------------------------------------------------------------------------------------------


def swap_dream_token_ids(checkpoint: Path):
    """Swaps the ids of `<dream_start>` and `<dream_end>` in config.json only."""
    config = json.loads((checkpoint / "config.json").read_text())
    ids = config["special_tokens2ids_dict"]["additional_special_tokens"]
    ids["<dream_start>"], ids["<dream_end>"] = ids["<dream_end>"], ids["<dream_start>"]
    (checkpoint / "config.json").write_text(json.dumps(config))


def tamper_plugin(checkpoint: Path, name: str, change):
    state_dict = torch.load(checkpoint / name, weights_only=True)
    change(state_dict)
    torch.save(state_dict, checkpoint / name)


@pytest.mark.parametrize(
    ("tamper", "error", "message"),
    [
        (lambda c: (c / "dream_embedding.bin").unlink(), FileNotFoundError, r"dream_embedding\.bin is missing"),
        (lambda c: (c / "model.safetensors").unlink(), FileNotFoundError, r"no language-model weights"),
        (lambda c: tamper_plugin(c, "clip_vision_embedding.bin", lambda s: s.update(extra=torch.zeros(1))),
         ValueError, r"clip_vision_embedding\.bin: unexpected tensor 'extra'"),
        (lambda c: tamper_plugin(c, "stable_diffusion_head.bin", lambda s: s.pop("unet.conv_out.bias")),
         ValueError, r"stable_diffusion_head\.bin: missing 'unet\.conv_out\.bias'"),
        (lambda c: tamper_plugin(c, "dream_embedding.bin", lambda s: s.update(dream_queries=torch.zeros(1, 63, 64))),
         ValueError, r"dream_embedding\.bin: 'dream_queries' has shape \[1, 63, 64\], the config needs \[64, 64\]"),
        (lambda c: tamper_plugin(c, "dream_embedding.bin", lambda s: s.update(options=argparse.Namespace(lr=1))),
         ValueError, r"Refusing to load .*dream_embedding\.bin"),
        (swap_dream_token_ids, ValueError, r"gives '<dream_end>' the id 603, but the tokenizer files give it 602"),
    ],
    ids=["missing-plugin", "missing-main", "unexpected", "missing-tensor", "shape", "unsafe-pickle", "token-ids"],
)  # fmt: skip
def test_bad_checkpoints_fail_with_the_file_and_key_and_leave_nothing(variant, tmp_path, tamper, error, message):
    checkpoint = variant()
    tamper(checkpoint)
    with pytest.raises(error, match=message):
        convert(checkpoint, tmp_path / "converted")
    assert sorted(path.name for path in tmp_path.iterdir()) == ["original"]


def test_existing_output_needs_force(official_tiny, tmp_path):
    output = convert(official_tiny / "checkpoint", tmp_path / "converted")
    (output / "marker").write_text("old")
    with pytest.raises(FileExistsError, match="force"):
        convert(official_tiny / "checkpoint", output)
    assert (output / "marker").is_file()
    convert(official_tiny / "checkpoint", output, force=True)
    assert not (output / "marker").exists()


# ----------------------------------------------------------------------------------------------------------------
# Command line and upload
# ----------------------------------------------------------------------------------------------------------------


def test_cli_converts_and_pushes_the_folder(official_tiny, tmp_path, monkeypatch, capsys):
    hub = LocalHub.install(monkeypatch)
    output = tmp_path / "converted"
    arguments = ["convert", "--input", str(official_tiny / "checkpoint"), "--output", str(output)]
    assert cli_main([*arguments, "--dtype", "bfloat16", "--push-to-hub", "me/dreamllm-tiny"]) == 0
    assert json.loads((output / "config.json").read_text())["dtype"] == "bfloat16"
    assert hub.calls[0] == ("create_repo", "me/dreamllm-tiny", {"private": None, "exist_ok": True, "token": None})
    assert [call[:2] for call in hub.calls[1:]] == [("create_commit", "me/dreamllm-tiny")]
    assert "Uploaded converted to https://huggingface.co/me/dreamllm-tiny" in capsys.readouterr().out
    uploaded = {name.split("/")[0] for name in hub.uploads}
    assert {"README.md", "config.json", "model_index.json", "unet", "vae", "scheduler"} <= uploaded
    assert cli_main(arguments) == 2
    assert "already exists" in capsys.readouterr().err


@pytest.mark.parametrize(
    "arguments",
    [
        ["--output", "out"],
        ["--input", "in", "--llm", "llm", "--output", "out"],
        ["--from-components", "--llm", "x", "--output", "out"],
    ],
)
def test_cli_rejects_mixed_or_incomplete_modes(arguments, capsys):
    assert cli_main(["convert", *arguments]) == 2
    assert capsys.readouterr().err.count("\n") == 1
