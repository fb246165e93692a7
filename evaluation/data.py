"""Evaluation data: local files in the usual releases' layouts, read into samples with one field naming per task.

Every sample is a dict with `index` (its position, which also seeds it), `id`, `image` (a path or a PIL image) and
the task's fields:

| task | fields |
|---|---|
| vqa | `question`, `answers` (the human answers, usually 10) |
| caption | `captions` (the references) |
| pope | `question`, `label` ("yes" or "no") |
| multiple-choice | `question`, `options` (letter -> text), `answer` (a letter), optional `hint` |
| text-to-image | `captions` (what to draw; one is chosen per sample), `image` (the real picture, for FID) |

Readers, chosen from the file:
- JSON Lines (`.jsonl`): one sample per line with the fields above. Aliases of the usual releases are accepted:
  POPE's `text` for `question`, `caption` for a single-reference `captions`, `question_id` / `image_id` for `id`.
- COCO captions annotation JSON (`captions_val2014.json`: `images` + `annotations`): one sample per image.
- VQAv2 / OKVQA question JSON (`{"questions": [...]}`) with its annotation JSON beside it (`annotations=`), images
  named by `image_template` from `image_id` (default `COCO_val2014_{image_id:012d}.jpg`).
- MMBench TSV (`index, question, hint, A, B, C, D, answer, image` with base64 images).
- A Hugging Face `datasets` folder saved with `save_to_disk`, or a dataset name (downloaded by `datasets` itself),
  with the same field names.

Relative image paths are resolved against `image_root` (default: the data file's folder).
"""

import base64
import csv
import io
import json
from collections.abc import Iterable
from pathlib import Path

import PIL.Image

REQUIRED_FIELDS = {
    "vqa": ("question", "answers"),
    "caption": ("captions",),
    "pope": ("question", "label"),
    "multiple-choice": ("question", "options", "answer"),
    "text-to-image": ("captions",),
}
ALIASES = {"text": "question", "caption": "captions", "question_id": "id", "image_id": "id"}
OPTION_LETTERS = "ABCDEFGHIJ"


def load_samples(task: str, data: str, image_root: str | None = None, annotations: str | None = None,
                 image_template: str = "COCO_val2014_{image_id:012d}.jpg", split: str = "test") -> list[dict]:
    """The samples of `data` for `task`, each checked for the task's fields (a `ValueError` names the first gap)."""
    path = Path(data)
    root = Path(image_root) if image_root else (path.parent if path.is_file() else path)
    records = list(read_records(path, data, annotations, image_template, split))
    if not records:
        raise ValueError(f"data file {data} holds no samples")
    return [to_sample(task, record, index, root, data) for index, record in enumerate(records)]


def read_records(path: Path, data: str, annotations: str | None, image_template: str, split: str) -> Iterable[dict]:
    """The raw records of a data source, by its kind."""
    if path.is_dir():
        return read_hf_dataset(str(path), split, local=True)
    if not path.exists():
        if "/" in data and not data.startswith((".", "/")):
            return read_hf_dataset(data, split, local=False)
        raise ValueError(f"data file {data} does not exist")
    if path.suffix == ".tsv":
        return read_mmbench_tsv(path)
    if path.suffix == ".jsonl":
        return read_jsonl(path)
    if path.suffix == ".json":
        return read_json_release(path, annotations, image_template)
    raise ValueError(f"data file {data}: unknown format {path.suffix!r} (use .jsonl, .json, .tsv or a datasets folder)")


def read_jsonl(path: Path) -> Iterable[dict]:
    with open(path, encoding="utf-8") as handle:
        for number, line in enumerate(handle, 1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as error:
                raise ValueError(f"data file {path} line {number} is not JSON: {error.msg}") from None
            if not isinstance(record, dict):
                raise ValueError(f"data file {path} line {number} is not a JSON object")
            yield record


def read_json_release(path: Path, annotations: str | None, image_template: str) -> list[dict]:
    """COCO captions (`images` + `annotations`) or a VQAv2 question file with its annotation file."""
    try:
        content = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as error:
        raise ValueError(f"data file {path} is not JSON: {error.msg}") from None
    if isinstance(content, dict) and "images" in content and "annotations" in content:
        return coco_caption_records(content)
    if isinstance(content, dict) and "questions" in content:
        if annotations is None:
            raise ValueError(f"data file {path} is a VQA question file: pass its annotation file (--annotations)")
        answers = json.loads(Path(annotations).read_text(encoding="utf-8"))
        return vqa_records(content["questions"], answers.get("annotations", []), image_template)
    raise ValueError(f"data file {path} is neither a COCO captions file (images, annotations) nor a VQA question file")


def coco_caption_records(content: dict) -> list[dict]:
    captions: dict = {}
    for annotation in content["annotations"]:
        captions.setdefault(annotation["image_id"], []).append(annotation["caption"])
    return [{"id": image["id"], "image": image["file_name"], "captions": captions.get(image["id"], [])}
            for image in content["images"]]


def vqa_records(questions: list[dict], annotations: list[dict], image_template: str) -> list[dict]:
    answers = {a["question_id"]: [answer["answer"] for answer in a["answers"]] for a in annotations}
    return [{"id": q["question_id"], "image": image_template.format(image_id=q["image_id"]),
             "question": q["question"], **({"answers": answers[q["question_id"]]} if q["question_id"] in answers else {})}
            for q in questions]


def read_mmbench_tsv(path: Path) -> Iterable[dict]:
    with open(path, encoding="utf-8", newline="") as handle:
        for row in csv.DictReader(handle, delimiter="\t"):
            options = {letter: row[letter] for letter in OPTION_LETTERS if row.get(letter) not in (None, "", "nan")}
            image = row.get("image")
            yield {"id": row.get("index"), "question": row.get("question"), "hint": row.get("hint") or "",
                   "options": options, "answer": row.get("answer"), "category": row.get("category"),
                   "image": decode_base64_image(image) if image else None}


def decode_base64_image(text: str):
    try:
        return PIL.Image.open(io.BytesIO(base64.b64decode(text))).convert("RGB")
    except (ValueError, OSError) as error:
        return f"<undecodable base64 image: {error}>"


def read_hf_dataset(name: str, split: str, local: bool) -> Iterable[dict]:
    import datasets

    dataset = datasets.load_from_disk(name) if local else datasets.load_dataset(name, split=split)
    if isinstance(dataset, datasets.DatasetDict):
        if split not in dataset:
            raise ValueError(f"dataset {name} has no split {split!r} (it has {', '.join(dataset)})")
        dataset = dataset[split]
    return iter(dataset)


def to_sample(task: str, record: dict, index: int, root: Path, source: str) -> dict:
    """`record` with the task's field names, its image path resolved, `index` and `id` set; a gap is a ValueError."""
    sample = {ALIASES.get(key, key) if ALIASES.get(key, key) not in record else key: value
              for key, value in record.items()}
    if isinstance(sample.get("captions"), str):
        sample["captions"] = [sample["captions"]]
    missing = [name for name in (*REQUIRED_FIELDS[task], "image") if sample.get(name) in (None, "", [], {})]
    if missing:
        present = ", ".join(sorted(record)) or "nothing"
        raise ValueError(f"{source}: sample {index} has no {', '.join(missing)} for the {task} task (it has {present})")
    if task == "multiple-choice" and isinstance(sample["options"], list):
        sample["options"] = dict(zip(OPTION_LETTERS, sample["options"]))
    if isinstance(sample["image"], str) and not sample["image"].startswith("<"):
        sample["image"] = str(root / sample["image"])
    sample["index"], sample["id"] = index, str(sample.get("id", index))
    return sample


def load_image(image) -> PIL.Image.Image:
    """A sample's picture as RGB; an `OSError` naming the file when it does not load."""
    if isinstance(image, PIL.Image.Image):
        return image.convert("RGB")
    if isinstance(image, dict) and image.get("bytes"):
        return PIL.Image.open(io.BytesIO(image["bytes"])).convert("RGB")
    try:
        with PIL.Image.open(image) as picture:
            return picture.convert("RGB")
    except (OSError, ValueError, TypeError) as error:
        raise OSError(f"image {image} does not load: {error}") from None
