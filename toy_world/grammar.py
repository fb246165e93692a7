"""The toy world's request language: a small grammar of ways to ask for pictures and to ask about one.

Every production exists in two disjoint sets, `train` and `held_out`: the training data uses only the `train`
phrasings (whole constructions and words, such as the verb "sketch" or the connective "followed by"), and the
evaluation measures both, so it shows whether the model understands phrasings it never saw.

- :func:`request` phrases a request for one to three shapes, optionally sized ("a small red circle"), listed with
  connectives or a count ("two pictures: ..."), in one of many constructions ("Could you show me ...?",
  "... please."), with US/UK spelling, case and punctuation variants.
- :func:`question` asks about a picture's colour, its shape, or what it shows.
- :func:`impossible_request` asks for something the world cannot draw ("Draw a cat."); its answer is
  :data:`REFUSAL`, text without a picture.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

SPLITS: tuple[str, ...] = ("train", "held_out")


@dataclass(frozen=True)
class Productions:
    """The alternatives of one grammar symbol, split into those used for training and those held out."""

    train: tuple[str, ...]
    held_out: tuple[str, ...]

    def options(self, split: str) -> tuple[str, ...]:
        """The alternatives of `split` (one of :data:`SPLITS`)."""
        if split not in SPLITS:
            raise ValueError(f"unknown split {split!r}; expected one of {SPLITS}")
        return getattr(self, split)

    def pick(self, rng: np.random.Generator, split: str) -> str:
        """One alternative of `split`, drawn from `rng`."""
        options = self.options(split)
        return options[int(rng.integers(len(options)))]


REQUESTS = Productions(
    train=(
        "Show me {objects}.",
        "Draw {objects}.",
        "Can you show me {objects}?",
        "Please draw {objects}.",
        "Can you draw {objects}?",
        "Show {objects}, please.",
        "I want {objects}.",
        "I want to see {objects}.",
        "I'd like {objects}.",
        "I need {objects}, please.",
        "Give me {objects}.",
        "Please give me {objects}.",
        "Make {objects}.",
        "Paint {objects}.",
        "Please paint {objects}.",
        "Create a picture of {objects}.",
        "Draw a picture of {objects}.",
        "{objects}, please.",
        "Please, {objects}.",
        "Let me see {objects}.",
        "Will you paint {objects}?",
        "Generate {objects}.",
    ),
    held_out=(
        "Could you show me {objects}?",
        "I would like to see {objects}.",
        "Sketch {objects}.",
        "Make a picture with {objects}.",
        "Would you draw {objects} for me?",
        "Please sketch {objects}.",
        "I need to see {objects}.",
        "Render {objects}, please.",
        "Could you paint {objects}?",
        "Show me a picture of {objects}.",
    ),
)
TWO_OBJECTS = Productions(
    train=("{0} and then {1}", "{0} and {1}", "{0}, then {1}", "first {0}, then {1}", "{0}, and then {1}"),
    held_out=("{0} followed by {1}", "{0}. After that, {1}", "{0} and after that {1}"),
)
THREE_OBJECTS = Productions(
    train=(
        "{0}, then {1} and finally {2}",
        "{0}, {1} and {2}",
        "first {0}, then {1}, then {2}",
        "{0}, then {1}, then {2}",
        "{0} and {1} and {2}",
    ),
    held_out=("first {0}, then {1}, finally {2}", "{0}, followed by {1} and {2}", "{0}, {1}, and after that {2}"),
)
COUNTED = Productions(
    train=("{count} pictures: {objects}", "{count} shapes: {objects}"),
    held_out=("{count} images: {objects}",),
)
COUNT_WORDS = ("one", "two", "three")
DETERMINERS = Productions(train=("a", "one"), held_out=("a",))
SIZE_WORDS: dict[str, Productions] = {
    "small": Productions(train=("small",), held_out=("tiny", "little")),
    "large": Productions(train=("large", "big"), held_out=("huge",)),
}
"""The words of each size the world draws (see `world.SIZE_RANGES`)."""

COLOUR_QUESTIONS = Productions(
    train=(
        "What colour is the shape?",
        "What colour is the shape in the image?",
        "Which colour is it?",
        "Tell me the colour.",
        "What colour do you see?",
        "What is the colour of the shape?",
    ),
    held_out=("Which colour does this shape have?", "What colour is it?", "Name the colour of the shape."),
)
SHAPE_QUESTIONS = Productions(
    train=("What shape is this?", "Which shape do you see?", "Name the shape.", "Tell me the shape.", "What shape is it?"),
    held_out=("What is the shape in this picture?", "Which shape is shown?", "What kind of shape is it?"),
)
DESCRIBE_QUESTIONS = Productions(
    train=(
        "Describe the image.",
        "What is in the picture?",
        "What is shown?",
        "Describe the picture.",
        "Describe what is shown.",
        "What does the image show?",
        "Describe it.",
        "Tell me about the picture.",
        "What is in this image?",
    ),
    held_out=("What do you see?", "Describe this image for me."),
)
QUESTIONS: dict[str, Productions] = {"colour": COLOUR_QUESTIONS, "shape": SHAPE_QUESTIONS, "describe": DESCRIBE_QUESTIONS}
"""Questions about a picture, by what they ask for."""

IMPOSSIBLE_THINGS = Productions(
    train=("a cat", "a dog", "a house", "a tree", "a car", "a star", "a heart", "a bird", "a pink circle",
           "a black square", "a brown triangle", "a face"),
    held_out=("an elephant", "a boat", "a white circle", "a flower"),
)
REFUSAL = "Sorry, I can only draw circles, squares and triangles in red, green, blue, yellow, purple or orange."
"""The answer to a request the toy world cannot draw."""


def object_phrase(colour: str, shape: str, size: str | None, rng: np.random.Generator | None, split: str) -> str:
    """`"a small red circle"`; `size` is a key of :data:`SIZE_WORDS` or None; without `rng` the plain phrasing."""
    words = [SIZE_WORDS[size].pick(rng, split) if rng is not None else size] if size else []
    words += [colour, shape]
    determiner = DETERMINERS.pick(rng, split) if rng is not None else "a"
    if determiner == "a" and words[0][0] in "aeiou":
        determiner = "an"
    return " ".join([determiner, *words])


def listed(phrases: list[str], rng: np.random.Generator | None, split: str) -> str:
    """One to three object phrases joined by a connective (`"a red circle and then a blue square"`)."""
    if len(phrases) == 1:
        return phrases[0]
    grammar = TWO_OBJECTS if len(phrases) == 2 else THREE_OBJECTS
    connective = grammar.pick(rng, split) if rng is not None else grammar.train[0]
    text = connective.format(*phrases)
    if rng is not None and rng.random() < 0.25:
        text = COUNTED.pick(rng, split).format(count=COUNT_WORDS[len(phrases) - 1], objects=text)
    return text


def request(
    objects: list[tuple[str, str]],
    sizes: list[str | None] | None = None,
    rng: np.random.Generator | None = None,
    split: str = "train",
) -> str:
    """A request for `objects` ((colour, shape) pairs) of `sizes`; without `rng`, the plain `"Show me ..."` form."""
    if not 1 <= len(objects) <= len(COUNT_WORDS):
        raise ValueError(f"a request asks for 1 to {len(COUNT_WORDS)} shapes, got {len(objects)} objects")
    sizes = sizes or [None] * len(objects)
    if len(sizes) != len(objects):
        raise ValueError(f"sizes has {len(sizes)} entries for {len(objects)} objects")
    phrases = [object_phrase(colour, shape, size, rng, split) for (colour, shape), size in zip(objects, sizes)]
    construction = REQUESTS.pick(rng, split) if rng is not None else REQUESTS.train[0]
    text = sentence_case(construction.format(objects=listed(phrases, rng, split)))
    return surface_variant(text, rng) if rng is not None else text


def question(asks: str, rng: np.random.Generator, split: str = "train") -> str:
    """A question asking for `asks` (a key of :data:`QUESTIONS`), in a surface variant."""
    return surface_variant(QUESTIONS[asks].pick(rng, split), rng)


def impossible_request(rng: np.random.Generator, split: str = "train") -> str:
    """A request for something outside the toy world (`"Could you draw a cat?"`)."""
    return surface_variant(sentence_case(REQUESTS.pick(rng, split).format(objects=IMPOSSIBLE_THINGS.pick(rng, split))), rng)


def sentence_case(text: str) -> str:
    return text[0].upper() + text[1:]


def surface_variant(text: str, rng: np.random.Generator) -> str:
    """`text` as people type it: UK or US spelling, and sometimes lower case, upper case, or other punctuation."""
    if rng.random() < 0.5:
        text = text.replace("colour", "color").replace("Colour", "Color")
    draw = rng.random()
    if draw < 0.15:
        text = text.lower()
    elif draw < 0.2:
        text = text.upper()
    draw = rng.random()
    if draw < 0.15:
        text = text.rstrip(".?!")
    elif draw < 0.22 and text.endswith("."):
        text = text[:-1] + "!"
    return text
