import json

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file
from transformers import CLIPImageProcessor

from dreamllm import DreamLLMProcessor
from dreamllm.processing.tokenization_dreamllm import convert_original_tokenizer


@pytest.fixture()
def processor(tiny):
    return tiny[1]


def gradient_image(mode="RGB", size=(30, 20)):
    array = np.stack(np.meshgrid(np.linspace(0, 255, size[0]), np.linspace(0, 255, size[1])), -1).sum(-1) / 2
    rgb = np.stack([array, 255 - array, np.full_like(array, 90)], -1).astype(np.uint8)
    return Image.fromarray(rgb).convert(mode)


def test_image_and_dream_placeholders_expand_to_their_blocks(processor):
    tokenizer = processor.tokenizer
    ids = processor(text="look <image> now draw <dream> end", images=[gradient_image()])["input_ids"][0]
    n, q = processor.num_image_tokens, processor.num_dream_queries
    start = ids.index(tokenizer.image_start_token_id)
    assert ids[start + 1 : start + 1 + n] == [tokenizer.image_patch_token_id] * n
    assert ids[start + 1 + n] == tokenizer.image_end_token_id
    dream = ids.index(tokenizer.dream_start_token_id)
    assert ids[dream + 1 : dream + 1 + q] == [tokenizer.image_patch_token_id] * q
    assert ids[dream + 1 + q] == tokenizer.dream_end_token_id
    assert tokenizer.image_token_id not in ids and tokenizer.dream_token_id not in ids
    assert ids.count(tokenizer.image_patch_token_id) == n + q


def test_number_of_images_must_match_the_placeholders(processor):
    with pytest.raises(ValueError, match="Found total 2 <image> tokens and 1 images"):
        processor(text="<image> and <image>", images=[gradient_image()])
    with pytest.raises(ValueError, match="Found 1 <image> tokens in the text but no images"):
        processor(text="just <image>")
    with pytest.raises(ValueError, match="Found total 0 <image> tokens and 1 images"):
        processor(text="no placeholder", images=[gradient_image()])


@pytest.mark.parametrize("mode", ["RGBA", "L", "P"])
def test_non_rgb_images_are_converted_to_rgb(processor, mode):
    image = gradient_image(mode)
    pixel_values = processor(text="<image>", images=[image], return_tensors="pt")["pixel_values"]
    expected = processor(text="<image>", images=[image.convert("RGB")], return_tensors="pt")["pixel_values"]
    assert pixel_values.shape == (1, 3, 16, 16)
    torch.testing.assert_close(pixel_values, expected)


def test_batches_pad_on_the_left_with_the_pad_token(processor):
    batch = processor(text=["a", "a much longer line of text"], return_tensors="pt")
    assert batch["input_ids"].shape[0] == 2
    padding = batch["attention_mask"][0] == 0
    assert padding[0] and not padding[-1]
    assert (batch["input_ids"][0][padding] == processor.tokenizer.pad_token_id).all()
    assert (batch["input_ids"][:, ~padding][0] == processor(text="a", return_tensors="pt")["input_ids"][0]).all()


def test_chat_template_is_vicuna_v1_1(processor):
    messages = [
        {"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "What is it?"}]},
        {"role": "assistant", "content": [{"type": "text", "text": "A cat."}]},
        {"role": "user", "content": "Now draw a dog."},
    ]
    text = processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    assert text == (
        "A chat between a curious user and an artificial intelligence assistant. The assistant gives helpful, "
        "detailed, and polite answers to the user's questions. USER: <image>\nWhat is it? ASSISTANT: A cat.</s>"
        "USER: Now draw a dog. ASSISTANT:"
    )
    custom = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"}]
    assert processor.apply_chat_template(custom, tokenize=False) == "Be brief. USER: Hi "
    drawn = [{"role": "assistant", "content": [{"type": "text", "text": "Here:"}, {"type": "image"}]}]
    assert processor.apply_chat_template(drawn, tokenize=False).endswith("ASSISTANT: Here:<dream></s>")


def test_chat_template_loads_and_expands_images(processor):
    messages = [{"role": "user", "content": [{"type": "image", "image": gradient_image()}, {"type": "text", "text": "?"}]}]
    inputs = processor.apply_chat_template(
        messages, add_generation_prompt=True, tokenize=True, return_dict=True, return_tensors="pt"
    )
    assert inputs["pixel_values"].shape == (1, 3, 16, 16)
    ids = inputs["input_ids"][0].tolist()
    assert ids.count(processor.tokenizer.image_patch_token_id) == processor.num_image_tokens
    assert ids[0] == processor.tokenizer.bos_token_id


def test_decode_document_turns_blocks_into_images(processor):
    tokenizer = processor.tokenizer
    text_ids = lambda text: tokenizer(text, add_special_tokens=False)["input_ids"]  # noqa: E731
    drawn = processor(text="<dream><image>", images=[gradient_image()])["input_ids"][0][1:]
    read = processor(text="<image>", images=[gradient_image()])["input_ids"][0][1:]
    ids = text_ids("Here is a cat:") + drawn + text_ids("and a dog:") + read + [tokenizer.eos_token_id]
    cat, dog = gradient_image(), gradient_image("L")
    assert processor.count_document_images(ids) == 2
    assert processor.decode_document(ids, images=[cat, dog]) == ["Here is a cat:", cat, "and a dog:", dog]
    with pytest.raises(ValueError, match=r"2 image slot\(s\) but 1 image\(s\)"):
        processor.decode_document(ids, images=[cat])
    assert processor.decode_document(text_ids("plain text")) == ["plain text"]


def test_processor_on_the_released_tokenizer_reproduces_the_original_ids_and_pixels(official_tiny):
    processor = DreamLLMProcessor(
        image_processor=CLIPImageProcessor.from_pretrained(official_tiny / "upstream" / "clip-vit-tiny"),
        tokenizer=convert_original_tokenizer(official_tiny / "checkpoint"),
        num_image_tokens=256,
        num_dream_queries=64,
    )
    meta = json.loads((official_tiny / "golden" / "meta.json").read_text())
    case = meta["tokenizer_cases"][2]
    image = Image.open(official_tiny / "inputs" / "image_0.png").convert("RGB")
    ids = processor(text=case["text"], images=[image])["input_ids"][0]
    tokenizer = processor.tokenizer
    expected = []
    for token_id in case["input_ids"]:
        if token_id == tokenizer.image_token_id:
            expected += [tokenizer.image_start_token_id] + [tokenizer.image_patch_token_id] * 256 + [tokenizer.image_end_token_id]
        elif token_id == tokenizer.dream_token_id:
            expected += [tokenizer.dream_start_token_id] + [tokenizer.image_patch_token_id] * 64 + [tokenizer.dream_end_token_id]
        else:
            expected.append(token_id)
    assert ids == expected
    golden_pixels = load_file(official_tiny / "golden" / "clip.safetensors")["pixel_values"]
    images = [Image.open(official_tiny / "inputs" / f"image_{i}.png").convert("RGB") for i in range(2)]
    pixel_values = torch.cat([processor.image_processor(image, return_tensors="pt")["pixel_values"] for image in images])
    assert (pixel_values - golden_pixels).abs().max().item() <= 1e-6


BLOCK_TOKENS = ["<im_patch>", "<im_start>", "<im_end>", "<dream_start>", "<dream_end>"]


@pytest.mark.parametrize(
    "text, num_images",
    [
        ("<image><im_patch> What is it?", 1),
        ("hello <dream_start> world", 0),
        ("a <dream_end>", 0),
        ("<im_start>", 0),
        ("look <image> then <im_end> here", 1),
        ("<dream> and <im_patch><im_patch>", 0),
        ("<IMAGE> is fine but <dream_start><dream_end> is not", 0),
    ],
)
def test_text_holding_block_tokens_is_refused_naming_the_token(processor, text, num_images):
    found = [token for token in BLOCK_TOKENS if token in text]
    with pytest.raises(ValueError, match=r"text\[0\] holds the reserved token\(s\) " + ", ".join(found)) as error:
        processor(text=text, images=[gradient_image()] * num_images or None)
    assert "<image>" in str(error.value) and "<dream>" in str(error.value)


def test_block_tokens_in_any_sample_or_chat_message_are_refused(processor):
    with pytest.raises(ValueError, match=r"text\[1\] holds the reserved token\(s\) <im_patch>"):
        processor(text=["fine", "not <im_patch> fine"])
    messages = [{"role": "user", "content": [{"type": "text", "text": "draw <dream_start> now"}]}]
    with pytest.raises(ValueError, match="<dream_start>"):
        processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=True, return_dict=True)


def test_pipeline_prompt_with_block_tokens_is_refused():
    from dreamllm.testing import tiny_pipeline

    pipe = tiny_pipeline()
    with pytest.raises(ValueError, match=r"prompt holds the reserved token\(s\) <im_patch>"):
        pipe("Show me <im_patch> a red circle.", max_new_tokens=2)
    for use_chat_template in (True, False):
        with pytest.raises(ValueError, match="<dream_end>"):
            pipe(["fine", "a <dream_end>"], max_new_tokens=2, use_chat_template=use_chat_template)
    with pytest.raises(ValueError, match="<im_start>"):
        pipe([{"role": "user", "content": "see <im_start>"}], max_new_tokens=2)
    with pytest.raises(ValueError, match="<im_end>"):
        pipe.text_to_image("a red circle", negative_prompt="an <im_end>", num_inference_steps=1)


@pytest.mark.parametrize(
    "text, error",
    [(5, "text must be a string or a list of strings, got int"), (["a", None], r"text\[1\] must be a string, got NoneType"),
     ([["pre", "tokenized"]], r"text\[0\] must be a string, got list"), ({"a": 1}, "got dict")],
)
def test_text_of_the_wrong_type_is_refused_naming_the_argument(processor, text, error):
    with pytest.raises(TypeError, match=error):
        processor(text=text)


def test_random_texts_give_consistent_blocks_or_a_clear_error(processor):
    """Over many random mixes of words, placeholders and block tokens: the patch count always matches, or it fails."""
    tokenizer = processor.tokenizer
    rng = np.random.default_rng(0)
    pieces = ["cat", " ", "draw", "<image>", "<dream>", "\n", "<s>", "</s>", "<im", "patch>", *BLOCK_TOKENS]
    num_checked = num_refused = 0
    for _ in range(300):
        text = "".join(rng.choice(pieces, size=int(rng.integers(1, 8))))
        num_images, num_dreams = text.count("<image>"), text.count("<dream>")
        images = [gradient_image()] * num_images or None
        if any(token in text for token in BLOCK_TOKENS):
            with pytest.raises(ValueError, match="reserved token"):
                processor(text=text, images=images)
            num_refused += 1
            continue
        ids = processor(text=text, images=images)["input_ids"][0]
        expected = num_images * processor.num_image_tokens + num_dreams * processor.num_dream_queries
        assert ids.count(tokenizer.image_patch_token_id) == expected, text
        assert ids.count(tokenizer.image_start_token_id) == num_images, text
        assert ids.count(tokenizer.dream_start_token_id) == num_dreams, text
        num_checked += 1
    assert num_checked > 50 and num_refused > 50


def sixteen_bit_ramp(mode):
    """A 16-bit greyscale ramp over 0-65535 as a PIL image of `mode`, and its expected 8-bit RGB reading."""
    levels = np.linspace(0, 65535, 30 * 20).reshape(20, 30).astype(np.uint16)
    image = Image.fromarray(levels if mode == "I;16" else levels.astype(np.int32))
    grey = np.rint(levels / 257).astype(np.uint8)
    return image, Image.fromarray(np.stack([grey] * 3, -1))


@pytest.mark.parametrize("mode", ["I;16", "I"])
def test_sixteen_bit_images_are_scaled_to_eight_bits(processor, mode):
    image, expected = sixteen_bit_ramp(mode)
    assert image.mode == mode
    assert (np.asarray(image.convert("RGB")) == 255).mean() > 0.99  # PIL's conversion alone clips it to white
    pixel_values = processor(text="<image>", images=[image], return_tensors="pt")["pixel_values"]
    torch.testing.assert_close(pixel_values, processor(text="<image>", images=[expected], return_tensors="pt")["pixel_values"])
    assert pixel_values.std() > 0.1


def test_two_dimensional_greyscale_arrays_are_read_as_greyscale(processor):
    grey = np.asarray(gradient_image("L"))
    expected = processor(text="<image>", images=[gradient_image("L")], return_tensors="pt")["pixel_values"]
    for image in (grey, torch.from_numpy(grey.copy())):
        pixel_values = processor(text="<image>", images=[image], return_tensors="pt")["pixel_values"]
        torch.testing.assert_close(pixel_values, expected)


@pytest.mark.parametrize(
    "images, error, message",
    [
        ([None], TypeError, r"images\[0\] is None"),
        ([gradient_image(), None], TypeError, r"images\[1\] is None"),
        ([np.zeros(5, np.uint8)], ValueError, r"images\[0\] has shape \(5,\); an image is"),
        ([gradient_image(), 5], TypeError, r"images\[1\] must be a PIL image, a numpy array, a torch tensor or a path, got int"),
        ([np.zeros((1, 1, 1, 1, 9), np.uint8)], ValueError, r"images\[0\] has shape \(1, 1, 1, 1, 9\)"),
    ],
)
def test_bad_images_get_one_line_errors_naming_the_entry(processor, images, error, message):
    with pytest.raises(error, match=message) as raised:
        processor(text="<image>" * len(images), images=images)
    assert "\n" not in str(raised.value)


def test_a_decompression_bomb_is_an_oserror_naming_the_file(tmp_path, monkeypatch, capsys):
    from dreamllm.cli import main
    from dreamllm.processing.images import open_image

    path = tmp_path / "bomb.png"
    gradient_image().save(path)
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 100)  # the 600-pixel picture is then over twice the limit
    with pytest.raises(OSError, match=f"cannot read image {path}: it is too large"):
        open_image(path)
    code = main(["generate", "A prompt", "--image", str(path), "--output", str(tmp_path / "out")])
    errors = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(errors) == 1 and "too large" in errors[0]
    assert not (tmp_path / "out").exists()


def test_opening_sixteen_bit_files_scales_them(processor, tmp_path):
    from dreamllm.processing.images import open_image

    image, expected = sixteen_bit_ramp("I;16")
    image.save(tmp_path / "deep.png")
    np.testing.assert_array_equal(np.asarray(open_image(tmp_path / "deep.png")), np.asarray(expected))
    expected_pixels = processor(text="<image>", images=[expected], return_tensors="pt")["pixel_values"]
    for path in (tmp_path / "deep.png", str(tmp_path / "deep.png")):
        pixel_values = processor(text="<image>", images=[path], return_tensors="pt")["pixel_values"]
        torch.testing.assert_close(pixel_values, expected_pixels)


def test_an_empty_text_list_is_refused(processor):
    with pytest.raises(ValueError, match="text is an empty list"):
        processor(text=[])


def test_image_paths_are_loaded_by_one_rule_in_processor_and_pipeline(tmp_path, monkeypatch):
    from dreamllm.pipelines.pipeline_dreamllm import as_image_list
    from dreamllm.processing.images import load_image

    image, expected = sixteen_bit_ramp("I;16")
    image.save(tmp_path / "deep.png")
    for loaded in (load_image(str(tmp_path / "deep.png")), as_image_list(str(tmp_path / "deep.png"))[0]):
        np.testing.assert_array_equal(np.asarray(loaded), np.asarray(expected))
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 100)
    with pytest.raises(OSError, match="deep.png: it is too large"):
        as_image_list([str(tmp_path / "deep.png")])
