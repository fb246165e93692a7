"""Evaluation data readers: the usual releases' layouts become samples with one naming; gaps are named errors."""

import base64
import io
import json

import PIL.Image
import pytest

from dreamllm.evaluation import load_samples


def write_picture(path):
    PIL.Image.new("RGB", (8, 8), (255, 0, 0)).save(path)
    return path


def test_coco_captions_json_gives_one_sample_per_image_with_all_references(tmp_path):
    write_picture(tmp_path / "a.jpg")
    content = {"images": [{"id": 7, "file_name": "a.jpg"}],
               "annotations": [{"image_id": 7, "caption": "A cat."}, {"image_id": 7, "caption": "A small cat."}]}
    (tmp_path / "captions_val2014.json").write_text(json.dumps(content))
    [sample] = load_samples("caption", str(tmp_path / "captions_val2014.json"))
    assert sample["captions"] == ["A cat.", "A small cat."]
    assert sample["id"] == "7" and sample["image"] == str(tmp_path / "a.jpg") and sample["index"] == 0


def test_vqav2_question_and_annotation_pair(tmp_path):
    questions = {"questions": [{"image_id": 42, "question": "What colour?", "question_id": 420}]}
    annotations = {"annotations": [{"question_id": 420, "answers": [{"answer": "red"}] * 10}]}
    (tmp_path / "q.json").write_text(json.dumps(questions))
    (tmp_path / "a.json").write_text(json.dumps(annotations))
    [sample] = load_samples("vqa", str(tmp_path / "q.json"), annotations=str(tmp_path / "a.json"))
    assert sample["answers"] == ["red"] * 10 and sample["question"] == "What colour?" and sample["id"] == "420"
    assert sample["image"].endswith("COCO_val2014_000000000042.jpg")
    with pytest.raises(ValueError, match="annotation file"):
        load_samples("vqa", str(tmp_path / "q.json"))


def test_pope_jsonl_uses_text_for_the_question(tmp_path):
    lines = [{"question_id": 1, "image": "x.jpg", "text": "Is there a dog in the image?", "label": "no"}]
    (tmp_path / "pope.jsonl").write_text("\n".join(map(json.dumps, lines)))
    [sample] = load_samples("pope", str(tmp_path / "pope.jsonl"), image_root="/data/coco")
    assert sample["question"] == "Is there a dog in the image?" and sample["label"] == "no"
    assert sample["image"] == "/data/coco/x.jpg"


def test_mmbench_tsv_with_base64_images(tmp_path):
    buffer = io.BytesIO()
    PIL.Image.new("RGB", (8, 8), (0, 0, 255)).save(buffer, format="PNG")
    encoded = base64.b64encode(buffer.getvalue()).decode()
    header = "index\tquestion\thint\tA\tB\tC\tD\tanswer\tcategory\timage"
    (tmp_path / "mmbench.tsv").write_text(f"{header}\n5\tWhich colour?\t\tred\tblue\t\t\tB\tcolour\t{encoded}\n")
    [sample] = load_samples("multiple-choice", str(tmp_path / "mmbench.tsv"))
    assert sample["options"] == {"A": "red", "B": "blue"} and sample["answer"] == "B"
    assert sample["image"].getpixel((0, 0)) == (0, 0, 255)


def test_datasets_folder(tmp_path):
    datasets = pytest.importorskip("datasets")
    picture = PIL.Image.new("RGB", (8, 8), (0, 255, 0))
    dataset = datasets.Dataset.from_dict({"image": [picture], "question": ["Colour?"], "answers": [["green"] * 10]})
    dataset.save_to_disk(str(tmp_path / "vqa"))
    [sample] = load_samples("vqa", str(tmp_path / "vqa"))
    assert sample["answers"] == ["green"] * 10 and sample["image"].getpixel((0, 0)) == (0, 255, 0)


@pytest.mark.parametrize("task, record, message", [
    ("vqa", {"image": "x.jpg", "question": "Colour?"}, "sample 0 has no answers for the vqa task"),
    ("vqa", {"image": "x.jpg", "captions": ["A cat."]}, "has no question, answers for the vqa task"),
    ("pope", {"question": "Is there a cat?", "label": "yes"}, "has no image"),
])
def test_missing_fields_and_wrong_task_files_are_named(tmp_path, task, record, message):
    (tmp_path / "data.jsonl").write_text(json.dumps(record) + "\n")
    with pytest.raises(ValueError, match=message):
        load_samples(task, str(tmp_path / "data.jsonl"))


def test_unreadable_sources_are_named(tmp_path):
    (tmp_path / "bad.jsonl").write_text('{"image": "x.jpg"}\nnot json\n')
    with pytest.raises(ValueError, match="line 2 is not JSON"):
        load_samples("caption", str(tmp_path / "bad.jsonl"))
    with pytest.raises(ValueError, match="does not exist"):
        load_samples("caption", str(tmp_path / "missing.jsonl"))
    (tmp_path / "data.csv").write_text("a,b\n")
    with pytest.raises(ValueError, match="unknown format"):
        load_samples("caption", str(tmp_path / "data.csv"))
    (tmp_path / "empty.jsonl").write_text("")
    with pytest.raises(ValueError, match="holds no samples"):
        load_samples("caption", str(tmp_path / "empty.jsonl"))
