"""The toy world's generator, writer and pixel analyzer."""

import itertools
import json
import re

import numpy as np
import pytest
from folders import folder_files
from PIL import Image

from dreamllm import toy_world as tw


def _read_jsonl(path):
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


# ----------------------------------------------------------------------------------------- rendering


@pytest.mark.parametrize("colour,shape", list(itertools.product(tw.COLOUR_NAMES, tw.SHAPES)))
def test_render_shape_is_analyzed_back(colour, shape):
    image = tw.render_shape(colour, shape, 30, (32, 32))
    assert image.size == (64, 64) and image.mode == "RGB"
    assert np.asarray(image)[0, 0].tolist() == [255, 255, 255]
    assert tw.analyze_image(image) == (colour, shape)


def test_render_shape_rejects_unknown_names():
    with pytest.raises(ValueError):
        tw.render_shape("pink", "circle", 30, (32, 32))
    with pytest.raises(ValueError):
        tw.render_shape("red", "hexagon", 30, (32, 32))


def test_analyzer_accuracy_on_random_scenes():
    n, correct = 360, 0
    for index in range(n):
        scene = tw.sample_scene(tw.sample_rng(123, index))
        correct += tw.analyze_image(scene.render()) == (scene.colour, scene.shape)
    assert correct / n >= 0.99


def test_analyzer_rejects_empty_and_cluttered_images():
    assert tw.analyze_image(Image.new("RGB", (64, 64), "white")) is None
    two = np.asarray(tw.render_shape("red", "circle", 20, (14, 14))).copy()
    other = np.asarray(tw.render_shape("blue", "square", 20, (48, 48)))
    two = np.minimum(two, other)
    assert tw.analyze_image(Image.fromarray(two)) is None
    grey = Image.new("RGB", (64, 64), "white")
    grey.paste((128, 128, 128), (16, 16, 48, 48))
    assert tw.analyze_image(grey) is None


def test_scenes_stay_inside_the_canvas_and_cover_the_world():
    seen = set()
    for index in range(400):
        scene = tw.sample_scene(tw.sample_rng(5, index))
        half = scene.size / 2
        assert half <= scene.center[0] <= 64 - half and half <= scene.center[1] <= 64 - half
        assert tw.MIN_SIZE <= scene.size <= tw.MAX_SIZE
        seen.add((scene.colour, scene.shape))
    assert len(seen) == 18


# ---------------------------------------------------------------------------------------------- text


def test_captions_and_answers_name_colour_and_shape():
    for index in range(50):
        rng = tw.sample_rng(9, index)
        scene = tw.sample_scene(rng)
        text = tw.caption(scene, rng).lower()
        assert scene.colour in text and scene.shape in text
        question, answer = tw.question_answer(scene, rng)
        assert question.endswith("?") or question.endswith(".")
        assert scene.colour in answer.lower() or scene.shape in answer.lower()
    scene = tw.Scene("red", "circle", 30, (32, 32), (220, 30, 30))
    phrasings = {tw.caption(scene, template=t) for t in range(len(tw.CAPTION_TEMPLATES))}
    assert len(phrasings) == len(tw.CAPTION_TEMPLATES)


def test_articles_agree():
    assert tw.short_description("orange", "square") == "an orange square"
    scene = tw.Scene("red", "circle", 20, (32, 32), (220, 30, 30))
    assert tw.caption(scene, template=1) == "A small red circle on a white background."
    assert not re.search(r"\ba [aeiou]|\ban [^aeiou ]", " ".join(tw.caption(scene, template=t) for t in range(9)))


def test_creation_prompts():
    assert tw.creation_prompt([("red", "circle"), ("blue", "triangle")]) == "Show me a red circle and then a blue triangle."
    assert tw.creation_prompt([("orange", "square")]) == "Show me an orange square."
    assert (
        tw.creation_prompt([("red", "circle"), ("blue", "triangle"), ("green", "square")])
        == "Show me a red circle, then a blue triangle and finally a green square."
    )


def test_answer_document_shows_each_object_after_its_mention():
    objects = [("red", "circle"), ("blue", "triangle"), ("yellow", "square")]
    prompt, doc = tw.answer_document(tw.sample_rng(0, 0), objects)
    assert all(f"{c} {s}" in prompt for c, s in objects)
    scenes = [item for item in doc if isinstance(item, tw.Scene)]
    assert [(s.colour, s.shape) for s in scenes] == objects
    for position, item in enumerate(doc):
        if isinstance(item, tw.Scene):
            assert f"{item.colour} {item.shape}" in doc[position - 1]


# -------------------------------------------------------------------------------------------- writer


@pytest.mark.parametrize("kind", tw.SAMPLE_KINDS)
def test_writer_format(tmp_path, kind):
    path = tw.write_dataset(tmp_path, kind, 12, seed=3)
    assert path == tmp_path / f"{kind}.jsonl"
    records = _read_jsonl(path)
    assert len(records) == 12
    for record in records:
        if "segments" in record:
            assert set(record) == {"segments"}
            images = [seg["image"] for seg in record["segments"] if "image" in seg]
            texts = [seg["text"] for seg in record["segments"] if "text" in seg]
            assert all(len(seg) == 1 for seg in record["segments"])
            assert texts and images
        else:
            assert set(record) == {"messages"}
            assert [m["role"] for m in record["messages"]] == ["user", "assistant"]
            parts = [part for m in record["messages"] for part in m["content"]]
            assert {part["type"] for part in parts} <= {"text", "image"}
            images = [part["image"] for part in parts if part["type"] == "image"]
            assert images
        for rel in images:
            assert not rel.startswith("/") and rel.startswith("images/")
            with Image.open(path.parent / rel) as image:
                assert image.size == (64, 64) and image.mode == "RGB"


def test_document_images_match_their_mentions(tmp_path):
    path = tw.write_dataset(tmp_path, "document", 20, seed=1)
    for record in _read_jsonl(path):
        segments = record["segments"]
        assert 1 <= sum("image" in s for s in segments) <= 3
        for position, segment in enumerate(segments):
            if "image" in segment:
                colour, shape = tw.analyze_image(Image.open(tmp_path / segment["image"]))
                assert f"{colour} {shape}" in segments[position - 1]["text"]


def test_instruction_creation_answers_the_prompt(tmp_path):
    path = tw.write_dataset(tmp_path, "instruction_creation", 20, seed=2)
    for record in _read_jsonl(path):
        prompt = record["messages"][0]["content"][0]["text"]
        images = [p["image"] for p in record["messages"][1]["content"] if p["type"] == "image"]
        found = [tw.analyze_image(Image.open(tmp_path / rel)) for rel in images]
        mentioned = re.findall(r"(\w+) (circle|square|triangle)", prompt)
        assert found == mentioned


def test_qa_answers_are_correct(tmp_path):
    path = tw.write_dataset(tmp_path, "qa", 30, seed=4)
    for record in _read_jsonl(path):
        image = next(p["image"] for p in record["messages"][0]["content"] if p["type"] == "image")
        colour, shape = tw.analyze_image(Image.open(tmp_path / image))
        answer = record["messages"][1]["content"][0]["text"].lower()
        assert colour in answer or shape in answer


def test_writer_is_deterministic(tmp_path):
    for run in ("a", "b"):
        tw.write_dataset(tmp_path / run, "document", 8, seed=7)
    assert folder_files(tmp_path / "a") == folder_files(tmp_path / "b")
    tw.write_dataset(tmp_path / "c", "document", 8, seed=8)
    assert folder_files(tmp_path / "a") != folder_files(tmp_path / "c")


def test_samples_do_not_depend_on_how_many_are_written(tmp_path):
    short = _read_jsonl(tw.write_dataset(tmp_path / "short", "caption", 3, seed=0))
    long = _read_jsonl(tw.write_dataset(tmp_path / "long", "caption", 10, seed=0))
    assert long[:3] == short
    for record in short:
        rel = record["segments"][0]["image"]
        assert (tmp_path / "short" / rel).read_bytes() == (tmp_path / "long" / rel).read_bytes()
