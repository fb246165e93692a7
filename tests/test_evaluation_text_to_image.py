"""Text-to-image evaluation on the toy model: best-of-N by CLIP score, FID on small local feature extractors."""

import json

import PIL.Image
import pytest
import torch
from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel, CLIPProcessor, CLIPTokenizer
from transformers.convert_slow_tokenizer import bytes_to_unicode

from dreamllm.evaluation import evaluate
from dreamllm.evaluation.text_to_image import ClipImageFeatures, fid_metric, fid_tensor
from dreamllm.evaluation.toy_data import write_toy_evaluation_data


def save_tiny_clip(folder) -> str:
    """A random CLIP (text and vision) a few thousand parameters big, with a byte-level tokenizer, saved to `folder`."""
    characters = list(bytes_to_unicode().values())
    vocab = {token: index for index, token in enumerate(
        ["<|startoftext|>", "<|endoftext|>", *characters, *(c + "</w>" for c in characters)])}
    tokenizer = CLIPTokenizer(vocab=vocab, merges=[])
    image_processor = CLIPImageProcessor(size={"shortest_edge": 16}, crop_size={"height": 16, "width": 16})
    config = CLIPConfig(
        text_config={"vocab_size": len(vocab), "hidden_size": 16, "intermediate_size": 32, "num_hidden_layers": 1,
                     "num_attention_heads": 2, "max_position_embeddings": 77, "bos_token_id": 0, "eos_token_id": 1,
                     "pad_token_id": 1},
        vision_config={"hidden_size": 16, "intermediate_size": 32, "num_hidden_layers": 1, "num_attention_heads": 2,
                       "image_size": 16, "patch_size": 4},
        projection_dim=8,
    )
    torch.manual_seed(0)
    CLIPModel(config).save_pretrained(folder)
    CLIPProcessor(image_processor=image_processor, tokenizer=tokenizer).save_pretrained(folder)
    return str(folder)


@pytest.fixture(scope="module")
def tiny_clip(tmp_path_factory):
    return save_tiny_clip(tmp_path_factory.mktemp("tiny-clip"))


def test_best_of_n_by_clip_score_then_fid_and_clip_score(tiny_clip, tmp_path):
    data = write_toy_evaluation_data(tmp_path / "data", num_samples=3)["text-to-image"]
    options = {"clip_model": tiny_clip, "fid_features": tiny_clip}
    settings = {"num_inference_steps": 3, "guidance_scale": 2.0, "num_images_per_caption": 2, "fid_image_size": 32}
    report = evaluate("text-to-image", None, str(data), tmp_path / "run", task_options=options, **settings)
    records = sorted((json.loads(line) for line in (tmp_path / "run" / "predictions-rank0.jsonl").open()),
                     key=lambda record: record["index"])
    assert report["num_samples"] == 3 and report["num_failed"] == 0
    assert report["settings"]["num_images_per_caption"] == 2
    for record in records:
        assert len(record["clip_scores"]) == 2
        assert record["chosen"] == max(range(2), key=record["clip_scores"].__getitem__)
        assert (tmp_path / "run" / record["image"]).is_file()
    assert report["scores"]["clip_score"] == pytest.approx(sum(max(r["clip_scores"]) for r in records) / 3)
    assert report["scores"]["fid_num_images"] == 3 and report["scores"]["fid"] >= 0

    # A CLIP score is 100 x the cosine of transformers' CLIP embeddings of the kept picture and its caption.
    model, processor = CLIPModel.from_pretrained(tiny_clip).eval(), CLIPProcessor.from_pretrained(tiny_clip)
    inputs = processor(text=[records[0]["caption"]], images=[PIL.Image.open(tmp_path / "run" / records[0]["image"])],
                       return_tensors="pt", padding=True)
    with torch.no_grad():
        image = model.get_image_features(pixel_values=inputs["pixel_values"]).pooler_output
        text = model.get_text_features(input_ids=inputs["input_ids"], attention_mask=inputs["attention_mask"]).pooler_output
    cosine = torch.nn.functional.cosine_similarity(image, text).item()
    assert max(records[0]["clip_scores"]) == pytest.approx(max(100 * cosine, 0.0), abs=1e-3)

    # The FID is torchmetrics' on the same features of the same 32 px crops.
    from transformers import CLIPModel as Model

    features = ClipImageFeatures(Model.from_pretrained(tiny_clip).vision_model, 16)
    expected = fid_metric(features)
    for line in data.read_text().splitlines():
        expected.update(fid_tensor(PIL.Image.open(data.parent / json.loads(line)["image"]), 32)[None], real=True)
    for record in records:
        expected.update(fid_tensor(PIL.Image.open(tmp_path / "run" / record["image"]), 32)[None], real=False)
    assert report["scores"]["fid"] == pytest.approx(expected.compute().item(), rel=1e-4)


def test_fid_of_a_set_with_itself_is_zero_on_the_toy_vision_tower(tmp_path):
    from dreamllm import DreamLLMPipeline
    from dreamllm.evaluation.text_to_image import pipeline_vision_features

    data = write_toy_evaluation_data(tmp_path, num_samples=4)["text-to-image"]
    fid = fid_metric(pipeline_vision_features(DreamLLMPipeline.from_pretrained()))
    for line in data.read_text().splitlines():
        picture = fid_tensor(PIL.Image.open(tmp_path / json.loads(line)["image"]), 64)[None]
        fid.update(picture, real=True)
        fid.update(picture, real=False)
    assert abs(fid.compute().item()) < 1e-3


def test_best_of_n_needs_a_clip_model(tmp_path):
    data = write_toy_evaluation_data(tmp_path / "data", num_samples=2)["text-to-image"]
    with pytest.raises(ValueError, match="needs a CLIP model"):
        evaluate("text-to-image", None, str(data), tmp_path / "run", task_options={"clip_model": "none"},
                 num_images_per_caption=2)


def test_readme_command_scores_fid_on_the_evaluated_models_own_vision_tower(tmp_path, capsys):
    from dreamllm.cli import main

    data = write_toy_evaluation_data(tmp_path / "data", num_samples=3)["text-to-image"]
    status = main(["evaluate", "text-to-image", "--data", str(data), "--output", str(tmp_path / "run"),
                   "--num-inference-steps", "3", "--num-images-per-caption", "1", "--clip-model", "none",
                   "--fid-features", "vision-tower", "--fid-image-size", "64"])
    report = json.loads((tmp_path / "run" / "results.json").read_text())
    assert status in (0, None) and report["num_failed"] == 0
    assert report["scores"]["fid_num_images"] == 3 and report["scores"]["fid"] >= 0
    assert "clip_score" not in report["scores"]
