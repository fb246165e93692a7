"""Each evaluation metric against values computed by hand on a few fixed predictions."""

import PIL.Image
import pytest
import torch

from dreamllm.evaluation.metrics import (
    caption_scores, choice_letter, normalize_vqa_answer, pope_scores, vqa_accuracy, yes_no,
)
from dreamllm.evaluation.tasks import MultipleChoiceTask, PopeTask, VQATask
from dreamllm.evaluation.text_to_image import fid_tensor


@pytest.mark.parametrize("matches, expected", [(0, 0.0), (1, 1 / 3), (2, 2 / 3), (3, 1.0), (7, 1.0)])
def test_vqa_accuracy_is_matching_humans_over_three_capped_at_one(matches, expected):
    answers = ["red"] * matches + ["blue"] * (10 - matches)
    assert vqa_accuracy("Red.", answers) == pytest.approx(expected)


def test_vqa_normalisation_digits_articles_punctuation_contractions():
    assert normalize_vqa_answer("Two dogs.") == "2 dogs"
    assert normalize_vqa_answer("  The Red   ball!") == "red ball"
    assert normalize_vqa_answer("dont") == "don't"
    assert normalize_vqa_answer("1,000") == "1000"
    assert vqa_accuracy("Unanswerable", ["unanswerable"] * 4 + ["dog"] * 6) == 1.0


def test_pope_scores_by_hand():
    # TP 1, FP 2, TN 1, FN 0: accuracy 2/4, precision 1/3, recall 1, F1 2PR/(P+R) = 1/2, yes ratio 3/4.
    scores = pope_scores(["Yes, there is.", "yes", "Yes", "No, there is not."], ["yes", "no", "no", "no"])
    assert scores == pytest.approx({"accuracy": 0.5, "precision": 1 / 3, "recall": 1.0, "f1": 0.5, "yes_ratio": 0.75})
    assert yes_no("There is not a cat.") == "no" and yes_no("I see a cat") == "yes"


def test_scores_per_category_beside_the_overall_ones():
    units = [{"index": i, "label": "yes", "category": "random" if i < 2 else "adversarial"} for i in range(4)]
    records = [{"index": i, "prediction": answer} for i, answer in enumerate(["yes", "yes", "yes", "no"])]
    scores = PopeTask().score(units, records)
    assert scores["accuracy"] == 0.75
    assert scores["by_category"]["random"]["accuracy"] == 1.0
    assert scores["by_category"]["adversarial"]["accuracy"] == 0.5
    assert "by_category" not in PopeTask().score([{**u, "category": "random"} for u in units], records)


def test_failed_samples_stay_in_the_denominator():
    units = [{"index": i, "answers": ["red"] * 10, "label": "yes"} for i in range(4)]
    records = [{"index": 0, "prediction": "red"}, {"index": 1, "prediction": "red"},
               {"index": 2, "prediction": "", "error": "image x does not load"}, {"index": 3, "prediction": "blue"}]
    assert VQATask().score(units, records) == {"accuracy": 0.5}
    assert PopeTask().score(units, [{**r, "prediction": "yes"} for r in records])["accuracy"] == 0.75


def test_caption_scores_of_exact_and_unrelated_captions():
    references = {"1": ["a red circle on white", "the red circle"], "2": ["a small blue square", "blue square"]}
    exact = caption_scores({"1": "a red circle on white", "2": "a small blue square"}, references)
    # CIDEr-D of a caption equal to a reference, with n-grams not shared by every image: cosine 1 on each n, x10,
    # averaged with the other reference.
    assert exact["BLEU-4"] == pytest.approx(1.0, abs=1e-6)
    assert exact["ROUGE-L"] == pytest.approx(1.0)
    unrelated = caption_scores({"1": "green triangle", "2": "yellow kite"}, references)
    assert unrelated["CIDEr"] == 0.0 and unrelated["ROUGE-L"] == 0.0
    assert exact["CIDEr"] > 1.0


def test_choice_letter_reads_a_standalone_letter_or_the_one_option_named():
    options = {"A": "red", "B": "purple", "C": "dark blue", "D": "blue"}
    assert choice_letter("B. purple", options) == "B"
    assert choice_letter("(C)", options) == "C" and choice_letter("D", options) == "D"
    assert choice_letter("The answer is A", options) == "A"
    assert choice_letter("A purple.", options) == "B"  # "A" is an article here: the option text decides
    assert choice_letter("It is red or purple.", options) is None  # two options named
    assert choice_letter("It is dark blue.", options) is None  # "blue" is named too: ambiguous
    assert choice_letter("green", options) is None


def test_circular_multiple_choice_needs_every_rotation_right():
    task = MultipleChoiceTask()
    sample = {"index": 0, "id": "q", "question": "Colour?", "options": {"A": "red", "B": "blue", "C": "green"},
              "answer": "B", "image": "x.png"}
    units = task.units([sample, {**sample, "index": 1, "id": "r"}], circular=True)
    assert [u["answer"] for u in units[:3]] == ["B", "A", "C"]  # "blue" moves with the rotation
    assert [u["options"]["A"] for u in units[:3]] == ["red", "blue", "green"]
    right = [{"index": u["index"], "prediction": u["answer"]} for u in units]
    one_wrong = right[:4] + [{"index": 4, "prediction": "C" if units[4]["answer"] != "C" else "A"}] + right[5:]
    assert task.score(units, right)["accuracy"] == 1.0
    assert task.score(units, one_wrong) == {"accuracy": 0.5, "num_questions": 2}


def test_fid_tensor_resizes_the_shorter_side_and_centre_crops():
    picture = PIL.Image.new("RGB", (128, 64), (255, 0, 0))
    picture.paste((0, 0, 255), (0, 0, 24, 64))  # a blue band at the left edge, cut off by the crop
    tensor = fid_tensor(picture, 256)
    assert tensor.shape == (3, 256, 256) and tensor.dtype == torch.uint8
    assert tensor[2].max() < 30 and tensor[0].min() > 225


def test_caption_scores_without_java_keep_cider_and_say_why_meteor_is_missing(monkeypatch, tmp_path):
    monkeypatch.setenv("PATH", str(tmp_path))  # no java on it
    references = {"1": ["a red circle on white", "the red circle"], "2": ["a small blue square", "blue square"]}
    with_java_missing = caption_scores({"1": "a red circle on white", "2": "green kite"}, references)
    assert with_java_missing["tokenizer"].startswith("simple")
    assert with_java_missing["CIDEr"] > 0 and "METEOR" not in with_java_missing and with_java_missing["METEOR_error"]
