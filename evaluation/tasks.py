"""What each task asks the model and how it scores the answers.

A task turns samples into work units (`units`), answers a batch of units with a pipeline (`predict`, one prediction
record per unit, `error` set where a unit failed) and scores all records (`score`). Failed units stay in every
denominator: they count as wrong answers.
"""

from collections.abc import Sequence

import torch

from .data import load_image
from .metrics import caption_scores, choice_letter, pope_scores, vqa_accuracy, yes_no
from .presets import Preset, comprehension_prompt

ANSWERABLE_QUESTION = "Is the answer can be known?"


def sample_generator(seed: int, index: int, draw: int = 0) -> torch.Generator:
    """The generator of one sample (and draw), from the run's seed and the sample's index only, never the rank."""
    return torch.Generator().manual_seed(seed * 1_000_003 + index * 1_009 + draw)


class ComprehensionTask:
    """A task that shows the model one image and a question and reads its text answer."""

    name = ""

    def prepare(self, pipe, preset: Preset, output):
        """Nothing to prepare: comprehension tasks keep only their prediction records."""

    def configure(self, pipe, **options):
        """Comprehension tasks take no options."""
        if options:
            raise ValueError(f"the {self.name} task takes no option {', '.join(sorted(options))}")

    def units(self, samples: list[dict], circular: bool = False) -> list[dict]:
        """The work units of `samples`: the samples themselves (multiple choice adds rotations)."""
        if circular:
            raise ValueError(f"--circular is for the multiple-choice task, not {self.name}")
        return samples

    def question(self, unit: dict, preset: Preset) -> str:
        return unit.get("question", "")

    def predict(self, pipe, units: Sequence[dict], preset: Preset, seed: int) -> list[dict]:
        """One record per unit: its `prediction`, or an `error` for a unit whose image or generation failed."""
        records, ready, images = [], [], []
        for unit in units:
            try:
                images.append(load_image(unit["image"]))
                ready.append(unit)
            except OSError as error:
                records.append(self.failure(unit, error))
        for unit, answer in zip(ready, self.answer(pipe, ready, images, preset, seed)):
            records.append(self.record(unit, answer) if not isinstance(answer, Exception) else self.failure(unit, answer))
        return sorted(records, key=lambda record: record["index"])

    def answer(self, pipe, units, images, preset: Preset, seed: int) -> list:
        """The model's answers to `units`, batched; a batch that fails is retried unit by unit to isolate the failure."""
        if not units:
            return []
        prompts = [comprehension_prompt(preset, self.question(unit, preset)) for unit in units]
        try:
            return self.generate(pipe, prompts, images, units, preset, seed)
        except (ValueError, RuntimeError) as error:
            if len(units) == 1:
                return [error]
            return [self.answer(pipe, [unit], [image], preset, seed)[0] for unit, image in zip(units, images)]

    def generate(self, pipe, prompts, images, units, preset: Preset, seed: int) -> list[str]:
        output = pipe(
            prompts, images=[[image] for image in images], use_chat_template=False, max_images=0,
            max_new_tokens=preset.max_new_tokens, generator=[sample_generator(seed, u["index"]) for u in units],
            **preset.decoding,
        )
        return [text.strip() for text in output.text]

    def record(self, unit: dict, answer: str) -> dict:
        return {"index": unit["index"], "id": unit["id"], "prediction": answer}

    def failure(self, unit: dict, error: Exception) -> dict:
        return {"index": unit["index"], "id": unit["id"], "prediction": "", "error": str(error)}

    def score(self, units: list[dict], records: list[dict]) -> dict:
        """
        The scores over all units, and per `category` when the samples name more than one (POPE's random / popular /
        adversarial splits, MMBench's abilities).
        """
        scores = self.scores_of(units, records)
        categories = by_category(units, records)
        if len(categories) > 1:
            scores["by_category"] = {name: self.scores_of(*pairs) for name, pairs in categories.items()}
        return scores

    def scores_of(self, units: list[dict], records: list[dict]) -> dict:
        raise NotImplementedError


def check_texts(sample: dict, field: str):
    """`sample[field]` must be a list of strings (human answers, reference captions)."""
    value = sample[field]
    if not isinstance(value, list) or not all(isinstance(text, str) for text in value):
        raise ValueError(f"sample {sample['index']} ({sample['id']}): {field} must be a list of strings, got {value!r:.80}")


class VQATask(ComprehensionTask):
    """VQAv2 / OKVQA / VizWiz / TextVQA accuracy: min(#humans who gave the answer / 3, 1), averaged."""

    name = "vqa"

    def units(self, samples, circular=False):
        for sample in samples:
            check_texts(sample, "answers")
        return super().units(samples, circular)

    def scores_of(self, units, records):
        scores = [0.0 if "error" in r else vqa_accuracy(r["prediction"], u["answers"]) for u, r in zip(units, records)]
        return {"accuracy": sum(scores) / len(scores)}


class VizWizTask(VQATask):
    """VizWiz as the original ran it: first asked whether the answer can be known; a "no" answers "unanswerable"."""

    def generate(self, pipe, prompts, images, units, preset, seed):
        known = [comprehension_prompt(preset, u.get("question", "") + " " + ANSWERABLE_QUESTION) for u in units]
        gate = super().generate(pipe, known, images, units, preset, seed)
        answers = super().generate(pipe, prompts, images, units, preset, seed)
        return ["unanswerable" if yes_no(g) == "no" else a for g, a in zip(gate, answers)]


class CaptionTask(ComprehensionTask):
    """COCO / Image2Paragraph / NoCaps captions, scored by pycocoevalcap."""

    name = "caption"

    def units(self, samples, circular=False):
        for sample in samples:
            check_texts(sample, "captions")
        return super().units(samples, circular)

    def scores_of(self, units, records):
        predictions = {str(r["index"]): r["prediction"] for r in records}
        references = {str(u["index"]): u["captions"] for u in units}
        return caption_scores(predictions, references)


class PopeTask(ComprehensionTask):
    """POPE: yes/no questions about objects; a failed sample counts as a wrong answer."""

    name = "pope"

    def units(self, samples, circular=False):
        for sample in samples:
            if str(sample["label"]).strip().lower() not in ("yes", "no"):
                raise ValueError(f"sample {sample['index']} ({sample['id']}): label must be yes or no, got {sample['label']!r}")
        return super().units(samples, circular)

    def scores_of(self, units, records):
        labels = [u["label"] for u in units]
        predictions = [r["prediction"] if "error" not in r else wrong_yes_no(u["label"]) for u, r in zip(units, records)]
        return pope_scores(predictions, labels)


def by_category(units: list[dict], records: list[dict]) -> dict[str, tuple[list[dict], list[dict]]]:
    """Units and records grouped by the samples' `category` field (absent: none)."""
    groups: dict = {}
    for unit, record in zip(units, records):
        if unit.get("category") not in (None, ""):
            group = groups.setdefault(str(unit["category"]), ([], []))
            group[0].append(unit)
            group[1].append(record)
    return groups


def wrong_yes_no(label: str) -> str:
    return "no" if label.strip().lower() == "yes" else "yes"


class MultipleChoiceTask(ComprehensionTask):
    """MMBench: options appended as "A. ..." lines; circular: each rotation of the options must be answered right."""

    name = "multiple-choice"

    def units(self, samples, circular=False):
        units = []
        for sample in samples:
            if not isinstance(sample["options"], dict) or len(sample["options"]) < 2:
                raise ValueError(f"sample {sample['index']} ({sample['id']}): options must be 2 or more, by letter")
            letters = sorted(sample["options"])
            if sample["answer"] not in letters:
                raise ValueError(f"sample {sample['index']}: answer {sample['answer']!r} is not one of its options")
            rotations = range(len(letters)) if circular else range(1)
            for rotation in rotations:
                units.append(rotated(sample, letters, rotation, len(units)))
        return units

    def question(self, unit, preset):
        hint = f"{unit['hint']}\n" if unit.get("hint") else ""
        options = "\n".join(f"{letter}. {text}" for letter, text in sorted(unit["options"].items()))
        return f"{hint}{unit['question']}\n{options}\n"

    def scores_of(self, units, records):
        right: dict = {}
        for unit, record in zip(units, records):
            chosen = None if "error" in record else choice_letter(record["prediction"], unit["options"])
            right.setdefault(unit["sample_index"], []).append(chosen == unit["answer"])
        return {"accuracy": sum(all(r) for r in right.values()) / len(right), "num_questions": len(right)}


def rotated(sample: dict, letters: list[str], rotation: int, index: int) -> dict:
    """`sample` with its option texts shifted `rotation` places along the letters (the answer letter follows)."""
    texts = [sample["options"][letter] for letter in letters]
    shifted = texts[rotation:] + texts[:rotation]
    answer_text = sample["options"][sample["answer"]]
    return {**sample, "options": dict(zip(letters, shifted)), "answer": letters[shifted.index(answer_text)],
            "index": index, "sample_index": sample["index"], "rotation": rotation}


COMPREHENSION_TASKS = {"vqa": VQATask, "caption": CaptionTask, "pope": PopeTask, "multiple-choice": MultipleChoiceTask}
