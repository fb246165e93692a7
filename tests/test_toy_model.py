"""The toy-world DreamLLM shipped with the package: it loads by default, draws what it is asked, reads what it sees,
and `python -m dreamllm.toy_world.build_toy_model` rebuilds a model like it from nothing."""

import json
import re
import subprocess
import sys

import PIL.Image
import pytest
import torch
from diffusers import AutoencoderKL, DPMSolverMultistepScheduler, UNet2DConditionModel
from transformers import AutoModelForCausalLM, AutoProcessor, CLIPVisionModel

from dreamllm import TOY_MODEL_PATH, DreamLLMPipeline
from dreamllm import toy_world
from dreamllm.cli import main as dreamllm_main
from dreamllm.toy_world import components as toy_model


@pytest.fixture(scope="module")
def toy_pipeline():
    pipe = DreamLLMPipeline.from_pretrained()
    pipe.set_progress_bar_config(disable=True)
    return pipe


def strings_in(value) -> list[str]:
    if isinstance(value, dict):
        return [text for item in value.items() for part in item for text in strings_in(part)]
    if isinstance(value, list):
        return [text for item in value for text in strings_in(item)]
    return [value] if isinstance(value, str) else []


def test_no_shipped_file_names_a_local_folder():
    absolute_path = re.compile(r"(/|[A-Za-z]:\\)[^/\\\s]+([/\\][^/\\\s]+)+")
    for path in TOY_MODEL_PATH.rglob("*.json"):
        config = json.loads(path.read_text())
        assert "_name_or_path" not in config, path
        assert not [text for text in strings_in(config) if absolute_path.fullmatch(text)], path


def test_the_shipped_checkpoint_is_small_safetensors_in_the_one_repo_layout():
    files = [path for path in TOY_MODEL_PATH.rglob("*") if path.is_file()]
    assert sum(path.stat().st_size for path in files) <= 25 * 2**20
    assert not [path for path in files if path.suffix in (".bin", ".pt", ".pth", ".pkl")]
    names = {str(path.relative_to(TOY_MODEL_PATH)) for path in files}
    assert {"model_index.json", "config.json", "model.safetensors", "unet/diffusion_pytorch_model.safetensors",
            "vae/diffusion_pytorch_model.safetensors", "scheduler/scheduler_config.json"} <= names
    model = AutoModelForCausalLM.from_pretrained(TOY_MODEL_PATH)
    processor = AutoProcessor.from_pretrained(TOY_MODEL_PATH)
    assert model.config.model_type == "dreamllm" and processor.num_dream_queries == model.config.num_dream_queries


@pytest.fixture(scope="module")
def toy_tokenizer():
    return toy_model.toy_processor().tokenizer


def test_the_toy_tokenizer_keeps_world_words_whole_and_splits_new_words_into_pieces(toy_tokenizer):
    for word in (*toy_world.COLOUR_NAMES, *toy_world.SHAPES, "colour", "color", "draw", "show", "small", "large"):
        assert toy_tokenizer.tokenize(f"a {word}") == ["▁a", "▁" + word], word
    pieces = toy_tokenizer.tokenize("Could you skecth a blu circle?")
    assert "▁circle" in pieces and toy_tokenizer.unk_token not in pieces
    assert "▁skecth" not in pieces and len([p for p in pieces if "k" in p or "h" in p]) >= 2
    ids = toy_tokenizer("Could you skecth a blu circle?", add_special_tokens=False).input_ids
    assert toy_tokenizer.decode(ids) == "Could you skecth a blu circle?"
    assert toy_tokenizer.tokenize("Show me a red circle.") == ["▁Show", "▁me", "▁a", "▁red", "▁circle", "."]


def test_the_toy_tokenizer_has_the_dreamllm_tokens(toy_tokenizer):
    shipped = AutoProcessor.from_pretrained(TOY_MODEL_PATH).tokenizer
    for token in ("<dream>", "<dream_start>", "<dream_end>", "<im_start>", "<im_end>", "<im_patch>"):
        assert toy_tokenizer.convert_tokens_to_ids(token) != toy_tokenizer.unk_token_id, token
        assert token in toy_tokenizer.tokenize(f"a {token} b")
    assert set(shipped.special_tokens_map) == set(toy_tokenizer.special_tokens_map)


def test_readme_command_draws_a_red_circle_then_a_blue_triangle(tmp_path, capsys):
    code = dreamllm_main(["generate", "Show me a red circle and then a blue triangle.", "--output", str(tmp_path),
                          "--seed", "0"])
    assert code == 0
    pictures = sorted(tmp_path.glob("image_*.png"))
    assert [toy_world.analyze_image(PIL.Image.open(path)) for path in pictures] == [
        ("red", "circle"), ("blue", "triangle")
    ]
    text = (tmp_path / "document.md").read_text()
    assert text.index("red circle") < text.index("image_0.png") < text.index("blue triangle") < text.index("image_1.png")


@pytest.mark.parametrize("colour, shape", [("green", "square"), ("purple", "circle"), ("orange", "triangle")])
def test_it_answers_questions_about_a_picture(toy_pipeline, colour, shape):
    picture = toy_world.render_shape(colour, shape, size=30, center=(30, 34))
    colour_answer = toy_pipeline("What colour is the shape?", images=[picture], max_images=0, max_new_tokens=12).text[0]
    shape_answer = toy_pipeline("What shape is this?", images=[picture], max_images=0, max_new_tokens=12).text[0]
    assert colour in colour_answer and shape in shape_answer


def test_the_same_seed_draws_the_same_picture(toy_pipeline):
    def draw(seed):
        generator = torch.Generator().manual_seed(seed)
        return toy_pipeline.text_to_image("A picture of a yellow square.", generator=generator, output_type="pt").images

    first, again, other = draw(3), draw(3), draw(4)
    assert torch.equal(first, again) and not torch.equal(first, other)
    assert toy_world.analyze_image(toy_model.to_pil(first * 2 - 1)[0]) == ("yellow", "square")


def test_the_build_script_runs_every_step_and_resumes(tmp_path):
    """The whole recipe at a toy scale of the toy scale: every step runs, writes its folder, and is skipped after."""
    command = [
        sys.executable, "-m", "dreamllm.toy_world.build_toy_model", "--work-dir", str(tmp_path), "--threads", "1",
        "--num-pictures", "32", "--vae-steps", "2", "--vision-steps", "2", "--unet-steps", "2", "--data-scale", "0.0005",
        "--dreamllm-steps", "2", "--sft-steps", "2", "--batch-size", "2",
    ]
    subprocess.run(command, check=True, capture_output=True, text=True, timeout=600)
    for step in ("vae", "vision", "unet", "assemble", "data", "dreamllm", "sft", "export"):
        assert (tmp_path / step).is_dir(), step
    pipe = DreamLLMPipeline.from_pretrained(tmp_path / "export")
    assert pipe.unet.config.cross_attention_dim == pipe.model.config.condition_dim
    assert isinstance(pipe.scheduler, DPMSolverMultistepScheduler) and pipe.scheduler.config.algorithm_type == "dpmsolver++"
    posterior = pipe.vae.encode(torch.zeros(1, 3, 64, 64)).latent_dist
    assert not [path for path in (tmp_path / "export").rglob("*.json") if "_name_or_path" in path.read_text()]
    assert posterior.std.max() < 1e-5  # the diffusion loss's posterior samples are the means the UNet learned
    rerun = subprocess.run(command, check=True, capture_output=True, text=True, timeout=600)
    assert rerun.stdout.count("done already") == 8


def test_the_build_script_reuses_the_components_of_a_saved_pipeline(tmp_path):
    command = [
        sys.executable, "-m", "dreamllm.toy_world.build_toy_model", "--work-dir", str(tmp_path), "--threads", "1",
        "--from-components", str(TOY_MODEL_PATH), "--only", "vae", "--only", "vision", "--only", "unet",
    ]
    result = subprocess.run(command, check=True, capture_output=True, text=True, timeout=300)
    assert result.stdout.count("taken from") == 3 and result.stdout.count("done already") == 3
    shipped = DreamLLMPipeline.from_pretrained()
    unet = UNet2DConditionModel.from_pretrained(tmp_path / "unet" / "unet")
    vision = CLIPVisionModel.from_pretrained(tmp_path / "vision")
    assert torch.equal(unet.conv_in.weight, shipped.unet.conv_in.weight)
    assert torch.equal(next(vision.parameters()), next(shipped.model.model.vision_tower.parameters()))
    assert AutoencoderKL.from_pretrained(tmp_path / "vae").config.scaling_factor == shipped.vae.config.scaling_factor
    assert not [path for path in tmp_path.rglob("*.json") if "_name_or_path" in path.read_text()]
    missing = subprocess.run([*command[:7], "--from-components", str(tmp_path / "nothing")], capture_output=True, text=True)
    assert missing.returncode == 2 and "not a saved pipeline folder" in missing.stderr and "Traceback" not in missing.stderr


def test_the_build_script_fine_tunes_the_unet_of_a_saved_pipeline_with_a_size_aware_caption_encoder(tmp_path):
    command = [
        sys.executable, "-m", "dreamllm.toy_world.build_toy_model", "--work-dir", str(tmp_path), "--threads", "1",
        "--from-components", str(TOY_MODEL_PATH), "--finetune-unet", "--only", "unet", "--unet-steps", "2",
        "--num-pictures", "16",
    ]
    result = subprocess.run(command, check=True, capture_output=True, text=True, timeout=300)
    assert result.stdout.count("taken from") == 2 and "unet check" in result.stdout
    shipped = DreamLLMPipeline.from_pretrained().unet
    tuned = UNet2DConditionModel.from_pretrained(tmp_path / "unet" / "unet")
    assert tuned.config.cross_attention_dim == shipped.config.cross_attention_dim
    assert not torch.equal(tuned.conv_in.weight, shipped.conv_in.weight)
    assert (tuned.conv_in.weight - shipped.conv_in.weight).abs().max() < 0.05  # trained further, not from scratch
    encoder = toy_model.ToyConditionEncoder.from_pretrained(tmp_path / "unet" / "condition_encoder")
    red_circle = torch.tensor([0]), torch.tensor([0])
    small, large, any_size = (encoder(*red_circle, torch.tensor([size])) for size in (0, 1, -1))
    assert not torch.equal(small, large) and torch.equal(encoder(*red_circle), any_size)
    alone = subprocess.run([*command[:7], "--finetune-unet"], capture_output=True, text=True)
    assert alone.returncode == 2 and "--finetune-unet needs --from-components" in alone.stderr
    assert "Traceback" not in alone.stderr


def test_train_without_a_model_fine_tunes_the_toy_model(tmp_path):
    data = toy_world.write_dataset(tmp_path / "data", "instruction_creation", 4, seed=7)
    code = dreamllm_main(["train", "--data", str(data), "--output", str(tmp_path / "out"), "--stage", "3",
                          "--max-steps", "3", "--batch-size", "2", "--save-steps", "100", "--learning-rate", "1e-3"])
    assert code == 0
    tuned, shipped = DreamLLMPipeline.from_pretrained(tmp_path / "out").model, DreamLLMPipeline.from_pretrained().model
    assert tuned.num_parameters() == shipped.num_parameters()
    assert not torch.equal(tuned.lm_head.weight, shipped.lm_head.weight)
    for frozen, original in zip(tuned.model.vision_tower.parameters(), shipped.model.vision_tower.parameters()):
        assert torch.equal(frozen, original)
