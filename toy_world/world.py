"""The toy world: one filled shape on a white 64x64 canvas, and text about it.

Everything DreamLLM's toy model is trained on comes from here, deterministically from a seed:

- :func:`render_shape` draws one shape; :func:`sample_scene` draws the parameters of a random scene.
- Captions, question/answer pairs, interleaved documents that mention one to three shapes (each image
  right after its mention), and creation prompts ("Show me a red circle and then a blue triangle.")
  with the documents that answer them.
- :func:`write_dataset` writes N samples of one kind as PNG files plus a JSON Lines file.
- :func:`analyze_image` is the deterministic judge: it reads the colour and shape back from pixels.

Samples are addressed by ``(seed, index)``: sample ``i`` of a seed is the same whatever the number of
samples requested.
"""

from __future__ import annotations

import colorsys
import json
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from . import grammar

IMAGE_SIZE = 64
BACKGROUND = (255, 255, 255)

COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (220, 30, 30),
    "green": (40, 170, 50),
    "blue": (30, 70, 220),
    "yellow": (235, 205, 20),
    "purple": (140, 50, 180),
    "orange": (245, 135, 20),
}
SHAPES: tuple[str, ...] = ("circle", "square", "triangle")
COLOUR_NAMES: tuple[str, ...] = tuple(COLOURS)

MIN_SIZE, MAX_SIZE = 18, 44
"""Side of the shape's bounding square, in pixels."""
SIZE_RANGES: dict[str, tuple[int, int]] = {"small": (MIN_SIZE, 26), "large": (37, MAX_SIZE)}
"""The sides (inclusive) a shape called small or large has; captions name these sizes, requests may ask for them."""
COLOUR_JITTER = 12
"""Largest per-channel offset added to a colour's RGB value in random scenes."""
_SUPERSAMPLE = 4

# ---------------------------------------------------------------------------------------------- scenes


@dataclass(frozen=True)
class Scene:
    """Parameters of one image: which shape, its colour, and where it is."""

    colour: str
    shape: str
    size: int
    center: tuple[int, int]
    rgb: tuple[int, int, int]

    def render(self) -> Image.Image:
        return render_shape(self.colour, self.shape, self.size, self.center, rgb=self.rgb)


def render_shape(
    colour: str,
    shape: str,
    size: int,
    center: tuple[float, float],
    rgb: tuple[int, int, int] | None = None,
    image_size: int = IMAGE_SIZE,
) -> Image.Image:
    """Draws one filled ``shape`` of ``colour`` on a white square canvas (anti-aliased, RGB).

    ``size`` is the side of the shape's bounding square in pixels and ``center`` its centre (x, y).
    ``rgb`` overrides the colour's nominal RGB value (random scenes jitter it slightly).
    """
    if colour not in COLOURS:
        raise ValueError(f"unknown colour {colour!r}; expected one of {COLOUR_NAMES}")
    if shape not in SHAPES:
        raise ValueError(f"unknown shape {shape!r}; expected one of {SHAPES}")
    fill = tuple(rgb) if rgb is not None else COLOURS[colour]
    s = _SUPERSAMPLE
    canvas = Image.new("RGB", (image_size * s, image_size * s), BACKGROUND)
    draw = ImageDraw.Draw(canvas)
    cx, cy = center[0] * s, center[1] * s
    half = size * s / 2
    if shape == "circle":
        draw.ellipse([cx - half, cy - half, cx + half, cy + half], fill=fill)
    elif shape == "square":
        side = half * 0.9  # a square of the same bounding size looks bigger than a circle
        draw.rectangle([cx - side, cy - side, cx + side, cy + side], fill=fill)
    else:  # upright equilateral triangle centred in its bounding square
        height = 2 * half * math.sqrt(3) / 2
        top = cy - height / 2
        draw.polygon([(cx, top), (cx - half, top + height), (cx + half, top + height)], fill=fill)
    return canvas.resize((image_size, image_size), Image.Resampling.BOX)


def sample_scene(
    rng: np.random.Generator, colour: str | None = None, shape: str | None = None, size: str | None = None
) -> Scene:
    """Draws a random scene; ``colour``/``shape`` fix those attributes, ``size`` (a key of `SIZE_RANGES`) its range."""
    colour = colour if colour is not None else COLOUR_NAMES[rng.integers(len(COLOUR_NAMES))]
    shape = shape if shape is not None else SHAPES[rng.integers(len(SHAPES))]
    low, high = SIZE_RANGES[size] if size is not None else (MIN_SIZE, MAX_SIZE)
    size = int(rng.integers(low, high + 1))
    margin = size / 2 + 2
    center = (
        int(round(rng.uniform(margin, IMAGE_SIZE - margin))),
        int(round(rng.uniform(margin, IMAGE_SIZE - margin))),
    )
    jitter = rng.integers(-COLOUR_JITTER, COLOUR_JITTER + 1, size=3)
    rgb = tuple(int(np.clip(c + j, 0, 255)) for c, j in zip(COLOURS[colour], jitter))
    return Scene(colour=colour, shape=shape, size=size, center=center, rgb=rgb)


def sample_rng(seed: int, index: int) -> np.random.Generator:
    """The random generator of sample ``index`` of ``seed`` (independent of how many are drawn)."""
    return np.random.default_rng([seed, index])


def _choice(rng: np.random.Generator, options):
    return options[int(rng.integers(len(options)))]


def _article(word: str) -> str:
    return "an" if word[0] in "aeiou" else "a"


def _size_word(size: int) -> str:
    return next((word for word, (low, high) in SIZE_RANGES.items() if low <= size <= high), "")


# -------------------------------------------------------------------------------------------- captions

CAPTION_TEMPLATES: tuple[str, ...] = (
    "{a_colour_shape}.",
    "{a_sized_colour_shape} on a white background.",
    "A picture of {a_colour_shape}.",
    "An image of {a_sized_colour_shape}.",
    "{a_shape} in {colour}.",
    "{colour} {shape}",
    "A {shape} that is {colour}.",
    "This is {a_colour_shape}.",
    "There is {a_sized_colour_shape}.",
)


def caption(scene: Scene, rng: np.random.Generator | None = None, template: int | None = None) -> str:
    """A one-sentence description of ``scene``; the phrasing is drawn from ``rng`` or fixed by ``template``."""
    if template is None:
        template = int(rng.integers(len(CAPTION_TEMPLATES))) if rng is not None else 0
    sized = " ".join(w for w in (_size_word(scene.size), scene.colour, scene.shape) if w)
    text = CAPTION_TEMPLATES[template].format(
        a_colour_shape=short_description(scene.colour, scene.shape),
        a_sized_colour_shape=f"{_article(sized)} {sized}",
        a_shape=f"{_article(scene.shape)} {scene.shape}",
        colour=scene.colour,
        shape=scene.shape,
    )
    return text[0].upper() + text[1:]


def short_description(colour: str, shape: str) -> str:
    """``"a red circle"``."""
    return f"{_article(colour)} {colour} {shape}"


# ---------------------------------------------------------------------------------- questions / answers

ANSWERS: dict[str, tuple[str, ...]] = {
    "colour": ("It is {colour}.", "The shape is {colour}."),
    "shape": ("It is {a_shape}.", "I see {a_shape}."),
    "describe": ("{A_desc}.", "{A_desc} on a white background."),
}
"""The answers to each kind of question of `grammar.QUESTIONS`."""
_QUESTION_WEIGHTS = {"colour": 1 / 3, "shape": 1 / 3, "describe": 1 / 3}


def question_answer(
    scene: Scene, rng: np.random.Generator | None = None, asks: str | None = None, split: str = "train"
) -> tuple[str, str]:
    """A question about ``scene`` (asking for ``asks``, or a random kind) in a phrasing of ``split``, and its answer.

    Without ``rng``, the first training phrasing and answer.
    """
    if asks is None:
        asks = str(rng.choice(list(_QUESTION_WEIGHTS), p=list(_QUESTION_WEIGHTS.values()))) if rng is not None else "colour"
    question = grammar.question(asks, rng, split) if rng is not None else grammar.QUESTIONS[asks].train[0]
    desc = short_description(scene.colour, scene.shape)
    answer = (_choice(rng, ANSWERS[asks]) if rng is not None else ANSWERS[asks][0]).format(
        colour=scene.colour,
        a_shape=f"{_article(scene.shape)} {scene.shape}",
        A_desc=desc[0].upper() + desc[1:],
    )
    return question, answer


# ------------------------------------------------------------------------ prompts and interleaved docs

_MENTION_TEMPLATES = (
    "Here is {desc}:",
    "First, {desc}.",
    "This is {desc}.",
    "Look at {desc}.",
)
_FOLLOW_TEMPLATES = (
    "Next comes {desc}.",
    "Then {desc}.",
    "And here is {desc}:",
    "After that, {desc}.",
)
_ENDINGS = ("", "That is all.", "Those are the shapes.", "The end.")
_SIZED_SHARE = 0.3
"""The share of requested shapes that the request gives a size."""


def creation_prompt(
    objects: list[tuple[str, str]],
    rng: np.random.Generator | None = None,
    sizes: list[str | None] | None = None,
    split: str = "train",
) -> str:
    """A request for ``objects``, phrased by `grammar.request` from ``rng`` in the phrasings of ``split``.

    Without ``rng`` the plain form: ``"Show me a red circle and then a blue triangle."``; three objects read
    ``"a red circle, then a blue triangle and finally a green square"``.
    """
    return grammar.request(objects, sizes, rng, split)


def sample_objects(rng: np.random.Generator, min_objects: int = 1, max_objects: int = 3) -> list[tuple[str, str]]:
    """One to three random (colour, shape) pairs."""
    n = int(rng.integers(min_objects, max_objects + 1))
    return [(_choice(rng, COLOUR_NAMES), _choice(rng, SHAPES)) for _ in range(n)]


def sample_sizes(rng: np.random.Generator, count: int) -> list[str | None]:
    """For each of ``count`` requested shapes, the size the request asks for (a key of `SIZE_RANGES`) or None."""
    return [_choice(rng, tuple(SIZE_RANGES)) if rng.random() < _SIZED_SHARE else None for _ in range(count)]


def interleaved_document(
    rng: np.random.Generator, scenes: list[Scene], sizes: list[str | None] | None = None
) -> list[str | Scene]:
    """A document that mentions each scene in turn (with its size word where ``sizes`` names one), its image right
    after the mention."""
    doc: list[str | Scene] = []
    for i, (scene, size) in enumerate(zip(scenes, sizes or [None] * len(scenes))):
        template = _choice(rng, _MENTION_TEMPLATES if i == 0 else _FOLLOW_TEMPLATES)
        doc.append(template.format(desc=grammar.object_phrase(scene.colour, scene.shape, size, None, "train")))
        doc.append(scene)
    ending = _choice(rng, _ENDINGS)
    if ending:
        doc.append(ending)
    return doc


def answer_document(
    rng: np.random.Generator, objects: list[tuple[str, str]], split: str = "train"
) -> tuple[str, list[str | Scene]]:
    """A request for ``objects`` (some sized) and the document answering it: text then image, per object, each image
    the asked colour, shape and size."""
    sizes = sample_sizes(rng, len(objects))
    prompt = creation_prompt(objects, rng, sizes, split)
    scenes = [sample_scene(rng, colour, shape, size) for (colour, shape), size in zip(objects, sizes)]
    return prompt, interleaved_document(rng, scenes, sizes)


# ---------------------------------------------------------------------------------------------- writer

SAMPLE_KINDS: tuple[str, ...] = (
    "caption", "creation", "document", "qa", "instruction_creation", "impossible_request", "conversation",
)
"""``caption``: image then caption; ``creation``: caption then image; ``document``: interleaved document
with one to three images; ``qa``: a chat about one image; ``instruction_creation``: a chat whose user asks
for shapes and whose assistant answers with text and images; ``impossible_request``: a chat whose user asks for
something the world cannot draw and whose assistant answers `grammar.REFUSAL`, without an image;
``conversation``: a chat of :data:`CONVERSATION_TURNS` exchanges, each a `qa` or an `instruction_creation` one, so a
question about a new picture is answered about that picture whatever was drawn or shown before. Chats use the
training phrasings of `grammar` only."""
CONVERSATION_TURNS = 2


class _ImageWriter:
    def __init__(self, root: Path, prefix: str):
        self.root, self.prefix, self.count = root, prefix, 0
        (root / "images").mkdir(parents=True, exist_ok=True)

    def __call__(self, scene: Scene) -> str:
        rel = f"images/{self.prefix}_{self.count:02d}.png"
        self.count += 1
        scene.render().save(self.root / rel, format="PNG", optimize=False)
        return rel


def _segments(doc: list[str | Scene], write) -> list[dict]:
    out: list[dict] = []
    for item in doc:
        if isinstance(item, Scene):
            out.append({"image": write(item)})
        elif out and "text" in out[-1]:
            out[-1]["text"] += " " + item
        else:
            out.append({"text": item})
    return out


def _content(doc: list[str | Scene], write) -> list[dict]:
    return [
        {"type": "image", "image": seg["image"]} if "image" in seg else {"type": "text", "text": seg["text"]}
        for seg in _segments(doc, write)
    ]


def _question_exchange(rng: np.random.Generator, write) -> list[dict]:
    """A user turn with a new picture and a question about it, and the assistant's answer."""
    scene = sample_scene(rng)
    question, answer = question_answer(scene, rng)
    return [
        {"role": "user", "content": _content([scene, question], write)},
        {"role": "assistant", "content": [{"type": "text", "text": answer}]},
    ]


def _request_exchange(rng: np.random.Generator, write) -> list[dict]:
    """A user turn asking for shapes, and the assistant's document that draws them."""
    prompt, doc = answer_document(rng, sample_objects(rng))
    return [
        {"role": "user", "content": [{"type": "text", "text": prompt}]},
        {"role": "assistant", "content": _content(doc, write)},
    ]


def make_sample(kind: str, seed: int, index: int, write) -> dict:
    """Sample ``index`` of ``kind`` for ``seed`` as a JSON-able record; ``write(scene) -> path`` stores images."""
    rng = sample_rng(seed, index)
    if kind == "caption":
        scene = sample_scene(rng)
        return {"segments": _segments([scene, caption(scene, rng)], write)}
    if kind == "creation":
        scene = sample_scene(rng)
        return {"segments": _segments([caption(scene, rng), scene], write)}
    if kind == "document":
        objects = sample_objects(rng)
        sizes = sample_sizes(rng, len(objects))
        scenes = [sample_scene(rng, c, s, size) for (c, s), size in zip(objects, sizes)]
        return {"segments": _segments(interleaved_document(rng, scenes, sizes), write)}
    if kind == "qa":
        return {"messages": _question_exchange(rng, write)}
    if kind == "instruction_creation":
        return {"messages": _request_exchange(rng, write)}
    if kind == "conversation":
        exchanges = [_question_exchange if rng.random() < 0.5 else _request_exchange for _ in range(CONVERSATION_TURNS)]
        return {"messages": [message for exchange in exchanges for message in exchange(rng, write)]}
    if kind == "impossible_request":
        return {
            "messages": [
                {"role": "user", "content": [{"type": "text", "text": grammar.impossible_request(rng)}]},
                {"role": "assistant", "content": [{"type": "text", "text": grammar.REFUSAL}]},
            ]
        }
    raise ValueError(f"unknown sample kind {kind!r}; expected one of {SAMPLE_KINDS}")


def write_dataset(output_dir: str | Path, kind: str, num_samples: int, seed: int = 0, filename: str | None = None) -> Path:
    """Writes ``num_samples`` samples of ``kind`` to ``output_dir/<kind>.jsonl`` (+ ``output_dir/images/``).

    Image paths in the JSON Lines file are relative to the file. Returns the path of the file.
    """
    root = Path(output_dir)
    root.mkdir(parents=True, exist_ok=True)
    path = root / (filename or f"{kind}.jsonl")
    with path.open("w", encoding="utf-8") as f:
        for index in range(num_samples):
            record = make_sample(kind, seed, index, _ImageWriter(root, f"{kind}_s{seed}_{index:06d}"))
            f.write(json.dumps(record, ensure_ascii=False) + "\n")
    return path


# -------------------------------------------------------------------------------------------- analyzer

_WHITE_DISTANCE = 90
"""A pixel belongs to the shape when its largest channel distance from white exceeds this."""
_MIN_AREA = 40
_HUES = {name: colorsys.rgb_to_hsv(*(c / 255 for c in rgb))[0] * 360 for name, rgb in COLOURS.items()}
_MAX_HUE_ERROR = 25.0
_MIN_SATURATION = 0.35


def _hue_distance(a: float, b: float) -> float:
    d = abs(a - b) % 360
    return min(d, 360 - d)


def classify_colour(pixels: np.ndarray) -> str | None:
    """The palette colour nearest in hue to the mean of ``pixels`` ([N, 3] uint8), or None when unclear."""
    mean = pixels.astype(np.float64).mean(axis=0) / 255
    hue, saturation, _ = colorsys.rgb_to_hsv(*mean)
    if saturation < _MIN_SATURATION:
        return None
    hue *= 360
    name = min(_HUES, key=lambda n: _hue_distance(hue, _HUES[n]))
    return name if _hue_distance(hue, _HUES[name]) <= _MAX_HUE_ERROR else None


def classify_shape(mask: np.ndarray) -> str | None:
    """``circle``/``square``/``triangle`` from the geometry of a boolean mask, or None when it fits none.

    Features: fill ratio of the bounding box (square ~1, circle ~pi/4, triangle ~1/2), aspect ratio,
    and how the row width grows from the top to the bottom (a triangle's grows linearly).
    """
    ys, xs = np.nonzero(mask)
    if len(ys) < _MIN_AREA:
        return None
    h = ys.max() - ys.min() + 1
    w = xs.max() - xs.min() + 1
    aspect = w / h
    if not 0.65 <= aspect <= 1.55:
        return None
    fill = len(ys) / (h * w)
    rows = mask[ys.min() : ys.max() + 1].sum(axis=1).astype(np.float64)
    third = max(1, h // 3)
    top, bottom = rows[:third].mean(), rows[-third:].mean()
    if fill >= 0.86:
        return "square"
    if 0.68 <= fill < 0.86 and abs(top - bottom) <= 0.25 * w:
        return "circle"
    if 0.38 <= fill < 0.68 and bottom > top + 0.35 * w:
        return "triangle"
    return None


def shape_mask(img: Image.Image | np.ndarray) -> np.ndarray:
    """Boolean mask of the pixels that are clearly not background, reduced to its largest 4-connected blob."""
    arr = np.asarray(img.convert("RGB") if isinstance(img, Image.Image) else img)
    distance = 255 - arr.astype(np.int16).min(axis=2)
    mask = distance > _WHITE_DISTANCE
    return _largest_component(mask)


def _largest_component(mask: np.ndarray) -> np.ndarray:
    labels = np.zeros(mask.shape, dtype=np.int32)
    best_label, best_size, current = 0, 0, 0
    h, w = mask.shape
    for y0, x0 in zip(*np.nonzero(mask)):
        if labels[y0, x0]:
            continue
        current += 1
        labels[y0, x0] = current
        stack, size = [(y0, x0)], 0
        while stack:
            y, x = stack.pop()
            size += 1
            for ny, nx in ((y - 1, x), (y + 1, x), (y, x - 1), (y, x + 1)):
                if 0 <= ny < h and 0 <= nx < w and mask[ny, nx] and not labels[ny, nx]:
                    labels[ny, nx] = current
                    stack.append((ny, nx))
        if size > best_size:
            best_label, best_size = current, size
    return labels == best_label if best_size else mask


def measure_size(img: Image.Image | np.ndarray, shape: str) -> int:
    """The side in pixels of the bounding square of the largest shape in ``img``, as ``render_shape``'s ``size``
    (a square is drawn at 0.9 of its bounding square)."""
    rows, columns = np.nonzero(shape_mask(img))
    if not len(rows):
        return 0
    extent = max(rows.max() - rows.min(), columns.max() - columns.min()) + 1
    return int(round(extent / 0.9)) if shape == "square" else int(extent)


def size_matches(img: Image.Image | np.ndarray, shape: str, size: str | None, tolerance: int = 3) -> bool:
    """Whether the shape in ``img`` has the asked ``size`` (a key of `SIZE_RANGES`, within ``tolerance`` pixels of
    its range); any size matches None."""
    if size is None:
        return True
    low, high = SIZE_RANGES[size]
    return low - tolerance <= measure_size(img, shape) <= high + tolerance


def analyze_image(img: Image.Image | np.ndarray) -> tuple[str, str] | None:
    """Reads ``(colour, shape)`` back from an image of the toy world; None when either is unclear.

    The shape must be the only sizeable non-white object: more than 15% of non-white pixels outside the
    largest blob (clutter, several shapes) gives None.
    """
    arr = np.asarray(img.convert("RGB") if isinstance(img, Image.Image) else img)
    distance = 255 - arr.astype(np.int16).min(axis=2)
    raw = distance > _WHITE_DISTANCE
    mask = _largest_component(raw)
    area = int(mask.sum())
    if area < _MIN_AREA or raw.sum() - area > 0.15 * area:
        return None
    # Colour from the interior (anti-aliased edges are mixed with white).
    interior = mask & (distance > 0.6 * distance[mask].max())
    colour = classify_colour(arr[interior])
    shape = classify_shape(mask)
    if colour is None or shape is None:
        return None
    return colour, shape
