"""`dreamllm generate` writes index.html, document.md and PNGs, and reports bad input in one line."""

import json
import os
import re
import shutil
import subprocess

import numpy as np
import PIL.Image
import pytest

from dreamllm.cli import main
from dreamllm.testing import tiny_pipeline


@pytest.fixture(scope="module")
def model_folder(tmp_path_factory):
    """A tiny pipeline whose generation config favours `<dream_start>`, so that it draws."""
    pipe = tiny_pipeline(seed=0)
    pipe.model.generation_config.sequence_bias = [[[pipe.model.config.dream_start_token_id], 50.0]]
    folder = tmp_path_factory.mktemp("cli") / "model"
    pipe.save_pretrained(folder)
    return folder


def generate(*arguments):
    return main(["generate", *map(str, arguments)])


def error_lines(capsys):
    captured = capsys.readouterr()
    assert "Traceback" not in captured.err
    return [line for line in captured.err.splitlines() if "error" in line]


def test_writes_html_markdown_and_pngs(model_folder, tmp_path, capsys):
    output = tmp_path / "story"
    code = generate("Tell a story", "--model", model_folder, "--output", output, "--seed", 0, "--steps", 2,
                    "--max-new-tokens", 4, "--max-images", 2, "--guidance", 2.5)
    assert code == 0
    captured = capsys.readouterr()
    assert f"Wrote {output / 'index.html'}" in captured.out
    assert sorted(path.name for path in output.iterdir()) == ["document.md", "image_0.png", "image_1.png", "index.html"]
    page = (output / "index.html").read_text()
    document = page[page.index("<main>") : page.index("</main>")]
    assert document.index('<img src="image_0.png"') < document.index('<img src="image_1.png"') < document.index("<p>")
    assert "<title>Tell a story</title>" in page and '<p class="prompt">Tell a story</p>' in page
    for name, value in [("model", str(model_folder)), ("seed", "0"), ("steps", "2"), ("guidance", "2.5"),
                        ("scheduler", "DDPMScheduler")]:
        assert f"<tr><th>{name}</th><td>{value}</td></tr>" in page
    assert not re.search(r"(src|href)=\"(https?:)?//|<script|<link", page)  # no external assets
    markdown = (output / "document.md").read_text()
    assert markdown.startswith("![image 1](image_0.png)\n\n![image 2](image_1.png)\n\n")
    assert PIL.Image.open(output / "image_1.png").size == (32, 32)


def test_prints_the_text_as_written_and_a_line_per_image(model_folder, tmp_path, capsys, monkeypatch):
    printed = []
    real_print = print
    monkeypatch.setattr("builtins.print", lambda *args, **kwargs: (printed.append("".join(map(str, args))),
                                                                     real_print(*args, **kwargs)))
    output = tmp_path / "story"
    generate("Tell a story", "--model", model_folder, "--output", output, "--seed", 1, "--steps", 2,
             "--max-new-tokens", 6, "--max-images", 1)
    document = (output / "document.md").read_text().split("\n\n")
    saved = printed.index(f"[image 1 saved to {output / 'image_0.png'}]")
    assert printed.index("\n[drawing image 1 ...]") == saved - 1
    text_before = "".join(printed[1 : saved - 1])
    text_after = "".join(printed[saved + 1 : printed.index(next(p for p in printed if p.startswith("Wrote ")))])
    written = [part for part in document if part.strip() and not part.startswith("![")]
    assert (text_before + text_after).split() == " ".join(written).split()
    assert len(printed[1 : saved - 1]) + len(printed[saved + 1 :]) > 3  # piece by piece, not at the end


def test_quiet_prints_nothing(model_folder, tmp_path, capsys):
    code = generate("Tell a story", "--model", model_folder, "--output", tmp_path / "quiet", "--steps", 2,
                    "--max-new-tokens", 3, "--quiet")
    assert code == 0
    captured = capsys.readouterr()
    assert captured.out == "" and captured.err == ""
    assert (tmp_path / "quiet" / "index.html").is_file()


def test_image_option_before_or_after_the_prompt(model_folder, tmp_path):
    picture = tmp_path / "input.png"
    PIL.Image.new("RGB", (20, 30), "blue").save(picture)
    common = ["--model", model_folder, "--max-images", 0, "--max-new-tokens", 3, "--seed", 0]
    assert generate("--image", picture, "What is this?", "--output", tmp_path / "before", *common) == 0
    assert generate("What is this?", "--image", picture, "--output", tmp_path / "after", *common) == 0
    before, after = ((tmp_path / name / "document.md").read_text() for name in ("before", "after"))
    assert before == after


def test_help_shows_examples(capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["generate", "--help"])
    assert exit_.value.code == 0
    help_text = capsys.readouterr().out
    assert "examples:" in help_text and 'dreamllm generate "' in help_text and "--image photo.png" in help_text


def test_same_seed_same_document(model_folder, tmp_path):
    for name in ("first", "second"):
        generate("Tell a story", "--model", model_folder, "--output", tmp_path / name, "--seed", 5, "--steps", 2,
                 "--max-new-tokens", 3, "--max-images", 1)
    assert (tmp_path / "first" / "index.html").read_text() == (tmp_path / "second" / "index.html").read_text()
    first, second = (np.asarray(PIL.Image.open(tmp_path / name / "image_0.png")) for name in ("first", "second"))
    assert np.array_equal(first, second)


def test_reads_input_images(model_folder, tmp_path):
    picture = tmp_path / "input.png"
    PIL.Image.new("RGB", (20, 30), "blue").save(picture)
    code = generate("What is this?", "--model", model_folder, "--image", picture, "--output", tmp_path / "answer",
                    "--max-images", 0, "--max-new-tokens", 3)
    assert code == 0
    assert sorted(path.name for path in (tmp_path / "answer").iterdir()) == ["document.md", "index.html"]


@pytest.mark.parametrize(
    "arguments, message",
    [
        (["--model", "/nonexistent/dreamllm"], "--model /nonexistent/dreamllm: the folder does not exist"),
        (["--model", "{model}", "--image", "/nonexistent/picture.png"], "cannot read image /nonexistent/picture.png"),
        (["--model", "{model}", "--image", "{text_file}"], "cannot read image"),
    ],
)
def test_bad_input_prints_one_line(model_folder, tmp_path, capsys, arguments, message):
    text_file = tmp_path / "not-an-image.png"
    text_file.write_text("hello")
    arguments = [argument.format(model=model_folder, text_file=text_file) for argument in arguments]
    try:
        code = generate("A prompt", "--output", tmp_path / "out", *arguments)
    except SystemExit as exit_:
        code = exit_.code
    assert code == 2
    lines = error_lines(capsys)
    assert len(lines) == 1 and message in lines[0]
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize(
    "option, value, message",
    [
        ("--steps", "abc", "argument --steps: expected a whole number >= 1, got 'abc'"),
        ("--steps", "0", "argument --steps: expected a whole number >= 1, got '0'"),
        ("--guidance", "-1", "argument --guidance: expected a number >= 0, got '-1'"),
        ("--max-new-tokens", "1.5", "argument --max-new-tokens: expected a whole number >= 1"),
        ("--seed", "x", "argument --seed: expected a whole number >= 0"),
    ],
)
def test_bad_numbers_print_one_line(model_folder, capsys, option, value, message):
    with pytest.raises(SystemExit) as exit_:
        generate("A prompt", "--model", model_folder, option, value)
    assert exit_.value.code == 2
    lines = error_lines(capsys)
    assert len(lines) == 1 and lines[0].startswith("dreamllm generate: error: ") and message in lines[0]


def damaged_copy(model_folder, tmp_path, damage):
    folder = tmp_path / "damaged"
    shutil.copytree(model_folder, folder)
    damage(folder)
    return folder


def truncate_weights(folder):
    weights = folder / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:1000])


def widen_the_model(folder):
    config = json.loads((folder / "config.json").read_text())
    config["text_config"]["hidden_size"] *= 2
    (folder / "config.json").write_text(json.dumps(config))


@pytest.mark.parametrize(
    "arguments, message",
    [
        (["--device", "gpu0"], "argument --device: unknown device 'gpu0'"),
        (["--output", "{existing_file}"], "a file of that name exists"),
        (["--output", "{existing_file}/inside"], "is a file, so the folder cannot be made"),
        (["--model", "./does-not-exist"], "--model ./does-not-exist: the folder does not exist"),
        (["--model", "{truncated}"], "cannot load it, the folder looks damaged"),
        (["--model", "{widened}"], "cannot load it, the folder looks damaged"),
        (["--model", "{no_config}"], "the folder has no config.json"),
        (["--model", "{no_unet}"], "--model"),
    ],
    ids=["device-gpu0", "output-is-a-file", "output-under-a-file", "missing-model", "truncated-weights",
         "wrong-shapes", "no-config", "no-unet"],
)
def test_user_errors_exit_2_with_one_line(model_folder, tmp_path, capsys, arguments, message):
    existing_file = tmp_path / "taken"
    existing_file.write_text("not a folder")
    folders = {
        "truncated": lambda: damaged_copy(model_folder, tmp_path, truncate_weights),
        "widened": lambda: damaged_copy(model_folder, tmp_path, widen_the_model),
        "no_config": lambda: damaged_copy(model_folder, tmp_path, lambda folder: (folder / "config.json").unlink()),
        "no_unet": lambda: damaged_copy(model_folder, tmp_path, lambda folder: shutil.rmtree(folder / "unet")),
    }
    arguments = [
        argument.format(existing_file=existing_file, **{name: "{" + name + "}" for name in folders})
        for argument in arguments
    ]
    arguments = [str(folders[a[1:-1]]()) if a[1:-1] in folders else a for a in arguments]
    if "--model" not in arguments:
        arguments += ["--model", str(model_folder)]
    try:
        code = generate("A prompt", "--output", tmp_path / "out", "--steps", 1, "--max-new-tokens", 2, *arguments)
    except SystemExit as exit_:
        code = exit_.code
    assert code == 2
    captured = capsys.readouterr()
    assert "Traceback" not in captured.err
    lines = [line for line in captured.err.splitlines() if line.strip() and "Loading weights" not in line]
    assert len(lines) == 1 and lines[0].startswith("dreamllm generate: error: ") and message in lines[0]
    if "--output" in arguments:
        assert "Loading" not in captured.out  # checked before the model is loaded, let alone run


@pytest.fixture()
def locked_folder(tmp_path):
    """A folder nobody may write into: mode 0500, and immutable (`chattr +i`) where the tests run as root."""
    locked = tmp_path / "locked"
    locked.mkdir(mode=0o500)
    immutable = os.geteuid() == 0 and subprocess.run(["chattr", "+i", str(locked)], capture_output=True).returncode == 0
    if os.access(locked, os.W_OK):
        pytest.skip("cannot make a folder unwritable here (root without chattr)")
    yield locked
    if immutable:
        subprocess.run(["chattr", "-i", str(locked)], check=True)


def test_unwritable_output_is_reported_before_generating(model_folder, locked_folder, capsys):
    assert generate("A prompt", "--model", model_folder, "--output", locked_folder / "out") == 2
    captured = capsys.readouterr()
    assert "is not writable" in captured.err and "Loading" not in captured.out


@pytest.mark.skipif(__import__("torch").cuda.is_available(), reason="this machine has CUDA")
def test_cuda_without_cuda_exits_2(model_folder, tmp_path, capsys):
    assert generate("A prompt", "--model", model_folder, "--device", "cuda", "--output", tmp_path / "out") == 2
    captured = capsys.readouterr()
    assert captured.err.strip() == (
        "dreamllm generate: error: --device cuda is not available on this machine (Torch not compiled with CUDA enabled)"
    )
    assert not (tmp_path / "out").exists()
