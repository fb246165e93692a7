"""`dreamllm evaluate` end to end on the built-in toy model and toy-world data: reports, resume, bad input."""

import json

import PIL.Image
import pytest

from dreamllm import DreamLLMPipeline
from dreamllm.cli import main
from dreamllm.evaluation import evaluate
from dreamllm.evaluation.metrics import vqa_accuracy
from dreamllm.evaluation.toy_data import scenes, write_toy_evaluation_data

TOY_PROMPTS = {"system_prompt": "", "prompt": "", "post_prompt": ""}


@pytest.fixture(scope="module")
def pipe():
    return DreamLLMPipeline.from_pretrained()


@pytest.fixture(scope="module")
def toy_data(tmp_path_factory):
    return write_toy_evaluation_data(tmp_path_factory.mktemp("toy-eval"), num_samples=6)


def predictions(folder):
    return [json.loads(line) for file in sorted(folder.glob("predictions-rank*.jsonl"))
            for line in file.read_text().splitlines()]


def test_vqa_report_scores_the_written_predictions_and_records_every_setting(pipe, toy_data, tmp_path):
    report = evaluate("vqa", pipe, str(toy_data["vqa"]), tmp_path / "vqa", batch_size=4, **TOY_PROMPTS)
    answers = {json.loads(line)["id"]: json.loads(line)["answers"] for line in toy_data["vqa"].read_text().splitlines()}
    written = predictions(tmp_path / "vqa")
    assert len(written) == report["num_samples"] == report["num_predictions"] == 6 and report["num_failed"] == 0
    expected = sum(vqa_accuracy(r["prediction"], answers[r["id"]]) for r in written) / 6
    assert report["scores"]["accuracy"] == pytest.approx(expected)
    # The toy model answers in sentences ("It is red.", "The shape is red."): exact-match VQA scoring credits only the
    # first, which 8 humans in 10 said in one of 3 phrasings. It must still have seen each picture and named its colour.
    colours = {f"toy-{index}": scene.colour for index, scene in enumerate(scenes(6))}
    assert all(colours[r["id"]] in r["prediction"].lower() for r in written)
    assert report["scores"]["accuracy"] > 0
    assert report["preset"] == "vqav2" and report["settings"]["max_new_tokens"] == 10
    assert report["settings"]["system_prompt"] == "" and report["settings"]["decoding"] == {"do_sample": False}
    assert report["versions"]["transformers"] and report["versions"]["pycocoevalcap"]
    assert report["model"]["revision"].startswith("local-") and report["data"]["name"] == "vqa.jsonl"
    assert report["run"] == {"batch_size": 4, "num_processes": 1}
    assert str(tmp_path) not in (tmp_path / "vqa" / "results.json").read_text()


def test_batch_size_does_not_change_predictions(pipe, toy_data, tmp_path):
    one = evaluate("pope", pipe, str(toy_data["pope"]), tmp_path / "one", batch_size=1, **TOY_PROMPTS)
    four = evaluate("pope", pipe, str(toy_data["pope"]), tmp_path / "four", batch_size=4, **TOY_PROMPTS)
    assert [r["prediction"] for r in predictions(tmp_path / "one")] == \
        [r["prediction"] for r in sorted(predictions(tmp_path / "four"), key=lambda r: r["index"])]
    assert one["scores"] == four["scores"] and set(one["scores"]) == {"accuracy", "precision", "recall", "f1",
                                                                        "yes_ratio"}


def test_caption_and_circular_multiple_choice(pipe, toy_data, tmp_path):
    captions = evaluate("caption", pipe, str(toy_data["caption"]), tmp_path / "caption", limit=3,
                        **{**TOY_PROMPTS, "prompt": "Describe the image."})
    assert {"CIDEr", "BLEU-4", "ROUGE-L"} <= set(captions["scores"]) and captions["num_samples"] == 3
    plain = evaluate("multiple-choice", pipe, str(toy_data["multiple-choice"]), tmp_path / "mc", limit=3, **TOY_PROMPTS)
    circular = evaluate("multiple-choice", pipe, str(toy_data["multiple-choice"]), tmp_path / "mc-circular", limit=3,
                        circular=True, **TOY_PROMPTS)
    assert plain["num_predictions"] == 3 and circular["num_predictions"] == 12  # 4 rotations of each question
    assert circular["scores"]["num_questions"] == 3 and circular["scores"]["accuracy"] <= plain["scores"]["accuracy"]


def test_rerun_resumes_and_skips_what_is_done(pipe, toy_data, tmp_path):
    folder = tmp_path / "run"
    first = evaluate("vqa", pipe, str(toy_data["vqa"]), folder, batch_size=2, **TOY_PROMPTS)
    file = folder / "predictions-rank0.jsonl"
    kept = file.read_text().splitlines()[:2]
    file.write_text("\n".join(kept) + '\n{"index": 2, "id": "toy-2", "predic')  # cut short by an interruption
    (folder / "results.json").unlink()
    second = evaluate("vqa", pipe, str(toy_data["vqa"]), folder, batch_size=2, **TOY_PROMPTS)
    assert second["scores"] == first["scores"]
    assert len(file.read_text().splitlines()) == 2 + 4  # the two done, then the four redone (the cut line dropped)


def test_unloadable_image_is_counted_as_a_failed_sample(pipe, toy_data, tmp_path):
    lines = toy_data["vqa"].read_text().splitlines()[:3]
    broken = {**json.loads(lines[1]), "image": "images/missing.png"}
    data = toy_data["vqa"].parent / "broken.jsonl"
    data.write_text("\n".join([lines[0], json.dumps(broken), lines[2]]) + "\n")
    report = evaluate("vqa", pipe, str(data), tmp_path / "broken", **TOY_PROMPTS)
    assert report["num_samples"] == 3 and report["num_failed"] == 1
    assert report["failed"][0]["id"] == broken["id"] and "missing.png does not load" in report["failed"][0]["error"]
    answers = [json.loads(line)["answers"] for line in (lines[0], lines[2])]
    scored = [r for r in predictions(tmp_path / "broken") if "error" not in r]
    expected = sum(vqa_accuracy(r["prediction"], a) for r, a in zip(scored, answers)) / 3
    assert report["scores"]["accuracy"] == pytest.approx(expected)


def run_cli(argv, capsys) -> tuple[int, str]:
    """The exit status and the error line; no traceback may be printed."""
    code = main(argv)
    error = capsys.readouterr().err
    assert "Traceback" not in error
    return code, error.strip().splitlines()[-1]


def test_cli_bad_input_is_one_line_and_exit_2(toy_data, tmp_path, capsys):
    code, error = run_cli(["evaluate", "vqa", "--data", str(toy_data["caption"]), "--output", str(tmp_path / "a")],
                          capsys)
    assert code == 2 and "has no question, answers for the vqa task" in error and error.startswith("dreamllm evaluate: error:")
    code, error = run_cli(["evaluate", "pope", "--data", str(toy_data["pope"]), "--output", str(tmp_path / "b"),
                           "--batch-size", "0"], capsys)
    assert code == 2 and "--batch-size must be >= 1" in error


def test_output_folder_of_another_run_is_refused(toy_data, tmp_path, capsys):
    folder = str(tmp_path / "run")
    base = ["evaluate", "pope", "--data", str(toy_data["pope"]), "--output", folder, "--limit", "2",
            "--system-prompt", "", "--post-prompt", ""]
    assert main(base) == 0
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert summary["num_samples"] == 2 and summary["task"] == "pope"
    code, error = run_cli([*base, "--prompt", " Answer yes or no."], capsys)
    assert code == 2 and "holds a run with other settings (differing: settings)" in error


def test_vizwiz_answers_unanswerable_exactly_when_the_model_says_the_answer_cannot_be_known(pipe, toy_data, tmp_path):
    from dreamllm.evaluation import get_preset
    from dreamllm.evaluation.metrics import yes_no
    from dreamllm.evaluation.presets import comprehension_prompt
    from dreamllm.evaluation.tasks import ANSWERABLE_QUESTION

    evaluate("vqa", pipe, str(toy_data["vqa"]), tmp_path / "vizwiz", preset="vizwiz", limit=3,
             prompt=" Can you tell?", post_prompt="")
    preset = get_preset("vqa", "vizwiz").with_overrides(prompt=" Can you tell?", post_prompt="")
    samples = [json.loads(line) for line in toy_data["vqa"].read_text().splitlines()[:3]]
    for sample, record in zip(samples, predictions(tmp_path / "vizwiz")):
        picture = PIL.Image.open(toy_data["vqa"].parent / sample["image"])
        gate = pipe(comprehension_prompt(preset, sample["question"] + " " + ANSWERABLE_QUESTION), images=[picture],
                    use_chat_template=False, max_images=0, max_new_tokens=preset.max_new_tokens, do_sample=False).text[0]
        assert (record["prediction"] == "unanswerable") == (yes_no(gate) == "no")


def test_a_foreign_non_empty_output_folder_is_refused(pipe, toy_data, tmp_path):
    (tmp_path / "notes.txt").write_text("mine")
    with pytest.raises(ValueError, match="is not empty and holds no evaluation run"):
        evaluate("vqa", pipe, str(toy_data["vqa"]), tmp_path, **TOY_PROMPTS)


@pytest.mark.parametrize("task, record, message", [
    ("vqa", {"question": "Colour?", "answers": "red"}, "answers must be a list of strings"),
    ("pope", {"question": "Is there a cat?", "label": "maybe"}, "label must be yes or no"),
    ("multiple-choice", {"question": "Colour?", "options": {"A": "red"}, "answer": "A"}, "options must be 2 or more"),
    ("multiple-choice", {"question": "Colour?", "options": ["red", "blue"], "answer": "C"}, "is not one of its options"),
    ("caption", {"captions": [3]}, "captions must be a list of strings"),
    ("text-to-image", {"captions": [["nested"]]}, "captions must be a list of strings"),
])
def test_malformed_fields_are_refused_before_the_model_loads(tmp_path, task, record, message):
    (tmp_path / "data.jsonl").write_text(json.dumps({"image": "x.png", **record}) + "\n")
    with pytest.raises(ValueError, match=message):
        evaluate(task, None, str(tmp_path / "data.jsonl"), tmp_path / "run")


def test_settings_that_do_not_fit_the_task_are_refused(toy_data, tmp_path):
    with pytest.raises(ValueError, match="--circular is for the multiple-choice task"):
        evaluate("vqa", None, str(toy_data["vqa"]), tmp_path / "a", circular=True)
    with pytest.raises(ValueError, match="preset 'pope' is for the pope task, not vqa"):
        evaluate("vqa", None, str(toy_data["vqa"]), tmp_path / "b", preset="pope")
    with pytest.raises(ValueError, match="unknown preset setting"):
        evaluate("vqa", None, str(toy_data["vqa"]), tmp_path / "c", temperature=0.7)
