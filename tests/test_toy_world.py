"""The toy world's generator, writer and pixel analyzer."""

import itertools
import json
import re
from types import SimpleNamespace

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
        assert re.search(r"colou?r|shape|describe|picture|image|shown", question.lower()), question
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
    assert tw.creation_prompt([("orange", "square")], sizes=["small"]) == "Show me a small orange square."


def _mentioned(prompt: str) -> list[tuple[str, str]]:
    return re.findall(r"(red|green|blue|yellow|purple|orange) (circle|square|triangle)", prompt.lower())


@pytest.mark.parametrize("split", tw.grammar.SPLITS)
def test_requests_name_every_object_in_order_in_many_phrasings(split):
    prompts = set()
    for index in range(300):
        rng = tw.sample_rng(11, index)
        objects = tw.sample_objects(rng)
        prompt = tw.creation_prompt(objects, rng, tw.sample_sizes(rng, len(objects)), split)
        assert _mentioned(prompt) == objects, prompt
        prompts.add(re.sub(r"(one|a|an) (\w+ )?(\w+) (circle|square|triangle)", "X", prompt.lower()).rstrip(".?!"))
    assert len(prompts) > 2 * len(tw.grammar.REQUESTS.options(split))
    spellings = " ".join(tw.question_answer(tw.sample_scene(rng), rng, "colour", split)[0] for rng in
                         (tw.sample_rng(12, i) for i in range(100)))
    assert "colour" in spellings.lower() and "color" in spellings.lower()


def test_held_out_phrasings_never_appear_in_the_training_split():
    grammar = tw.grammar
    productions = [value for value in vars(grammar).values() if isinstance(value, grammar.Productions)]
    productions += list(grammar.SIZE_WORDS.values())
    for production in productions:
        assert production.train and production.held_out
    for production in (grammar.REQUESTS, grammar.TWO_OBJECTS, grammar.THREE_OBJECTS, *grammar.QUESTIONS.values()):
        assert not set(production.train) & set(production.held_out)
    training_text = " ".join(
        tw.creation_prompt(tw.sample_objects(rng), rng) + " " + tw.question_answer(tw.sample_scene(rng), rng)[0]
        for rng in (tw.sample_rng(13, i) for i in range(2000))
    ).lower()
    for held_out in ("sketch", "could you", "would you", "followed by", "render", "tiny", "huge", "images:", "what do you see"):
        assert held_out not in training_text, held_out


def test_requested_sizes_are_drawn_and_named():
    named = set()
    for index in range(60):
        prompt, doc = tw.answer_document(tw.sample_rng(15, index), [("red", "circle")])
        scene, mention = doc[1], doc[0]
        for word, (low, high) in tw.SIZE_RANGES.items():
            if f"{word} red circle" in mention:
                named.add(word)
                assert low <= scene.size <= high, (mention, scene.size)
    assert named == set(tw.SIZE_RANGES)
    with pytest.raises(ValueError, match="1 to 3 shapes"):
        tw.creation_prompt([("red", "circle")] * 4)


def test_questions_of_each_kind_are_answered_right():
    scene = tw.Scene("orange", "triangle", 30, (32, 32), (245, 135, 20))
    for split in tw.grammar.SPLITS:
        rng = tw.sample_rng(14, 0)
        assert "orange" in tw.question_answer(scene, rng, "colour", split)[1]
        assert "triangle" in tw.question_answer(scene, rng, "shape", split)[1]
        assert "orange triangle" in tw.question_answer(scene, rng, "describe", split)[1]
    with pytest.raises(ValueError, match="split"):
        tw.question_answer(scene, tw.sample_rng(14, 0), "colour", "test")


def test_impossible_requests_are_refused_in_text(tmp_path):
    path = tw.write_dataset(tmp_path, "impossible_request", 20, seed=5)
    for record in _read_jsonl(path):
        prompt = record["messages"][0]["content"][0]["text"]
        assert not _mentioned(prompt) or re.search(r"pink|black|brown|white", prompt.lower())
        assert record["messages"][1]["content"] == [{"type": "text", "text": tw.grammar.REFUSAL}]


def test_answer_document_shows_each_object_after_its_mention():
    objects = [("red", "circle"), ("blue", "triangle"), ("yellow", "square")]
    prompt, doc = tw.answer_document(tw.sample_rng(0, 0), objects)
    assert _mentioned(prompt) == objects
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
            exchanges = tw.world.CONVERSATION_TURNS if kind == "conversation" else 1
            assert [m["role"] for m in record["messages"]] == ["user", "assistant"] * exchanges
            parts = [part for m in record["messages"] for part in m["content"]]
            assert {part["type"] for part in parts} <= {"text", "image"}
            images = [part["image"] for part in parts if part["type"] == "image"]
            assert bool(images) == (kind != "impossible_request")
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
        assert found == _mentioned(prompt)


def test_qa_answers_are_correct(tmp_path):
    path = tw.write_dataset(tmp_path, "qa", 30, seed=4)
    for record in _read_jsonl(path):
        image = next(p["image"] for p in record["messages"][0]["content"] if p["type"] == "image")
        colour, shape = tw.analyze_image(Image.open(tmp_path / image))
        answer = record["messages"][1]["content"][0]["text"].lower()
        assert colour in answer or shape in answer


def test_conversations_answer_each_turn_about_its_own_pictures(tmp_path):
    """A question after an earlier picture or drawn document is answered about the picture it comes with."""
    path = tw.write_dataset(tmp_path, "conversation", 40, seed=5)
    later_questions = 0
    for record in _read_jsonl(path):
        messages = record["messages"]
        for position in range(0, len(messages), 2):
            user, assistant = messages[position]["content"], messages[position + 1]["content"]
            shown = [tw.analyze_image(Image.open(tmp_path / p["image"])) for p in user if p["type"] == "image"]
            drawn = [tw.analyze_image(Image.open(tmp_path / p["image"])) for p in assistant if p["type"] == "image"]
            if shown:
                (colour, shape), = shown
                answer = assistant[0]["text"].lower()
                assert not drawn and (colour in answer or shape in answer)
                assert not set(_mentioned(answer)) - {(colour, shape)}
                later_questions += position > 0
            else:
                assert drawn == _mentioned(user[0]["text"])
    assert later_questions > 10


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


@pytest.mark.parametrize("shape", tw.SHAPES)
def test_the_drawn_size_is_measured_back(shape):
    for size in (20, 30, 42):
        picture = tw.render_shape("blue", shape, size=size, center=(32, 32))
        assert abs(tw.measure_size(picture, shape) - size) <= 2, (shape, size)
    small, large = (tw.render_shape("red", shape, size=size, center=(32, 32)) for size in (20, 42))
    assert tw.size_matches(small, shape, "small") and not tw.size_matches(small, shape, "large")
    assert tw.size_matches(large, shape, "large") and not tw.size_matches(large, shape, "small")
    assert tw.size_matches(small, shape, None)


class CaptionPainter:
    """A stand-in for a pipeline's `text_to_image`: paints each caption's colour and shape, at `side(size word)`."""

    def __init__(self, side):
        self.side = side

    def text_to_image(self, prompts, **options):
        images = []
        for prompt in prompts:
            words = set(re.findall(r"[a-z]+", prompt.lower()))
            colour, shape = (next(name for name in names if name in words) for names in (tw.COLOUR_NAMES, tw.SHAPES))
            size = next((name for name in tw.SIZE_RANGES if name in words), None)
            images.append(tw.render_shape(colour, shape, size=self.side(size), center=(32, 32)))
        return SimpleNamespace(images=images)


def test_sized_captions_count_only_pictures_drawn_at_the_named_size():
    from dreamllm.toy_world import evaluation

    sizes = tuple(tw.SIZE_RANGES)
    obeying = evaluation.caption_to_image(CaptionPainter({"small": 22, "large": 40}.get), 1, 1.0, sizes=sizes)
    assert (obeying.correct, obeying.total) == (72, 72)
    ignoring = evaluation.caption_to_image(CaptionPainter(lambda size: 40), 1, 1.0, sizes=sizes)
    assert (ignoring.correct, ignoring.total) == (36, 72)
    assert all(" small " in prompt and side == 40 for prompt, _, side in ignoring.failures)
    unsized = evaluation.caption_to_image(CaptionPainter(lambda size: 30), 1, 1.0)
    assert (unsized.correct, unsized.total) == (36, 36)
