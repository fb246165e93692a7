"""`dreamllm generate` writes index.html, document.md and PNGs, and reports bad input in one line."""

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
    assert "2/2" in captured.err  # denoising progress
    assert f"Wrote {output / 'index.html'}" in captured.out
    assert sorted(path.name for path in output.iterdir()) == ["document.md", "image_0.png", "image_1.png", "index.html"]
    page = (output / "index.html").read_text()
    assert page.index('<img src="image_0.png"') < page.index('<img src="image_1.png"') < page.index("<p>")
    assert "<title>Tell a story</title>" in page
    markdown = (output / "document.md").read_text()
    assert markdown.startswith("![image_0.png](image_0.png)\n\n![image_1.png](image_1.png)\n\n")
    assert PIL.Image.open(output / "image_1.png").size == (32, 32)


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
        (["--model", "/nonexistent/dreamllm"], "/nonexistent/dreamllm is neither a folder"),
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
