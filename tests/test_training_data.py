"""Training data: the JSON Lines formats, DreamLLM's token layout and labels, skipping bad documents, the collator."""

import json

import numpy as np
import pytest
import torch
from PIL import Image

from dreamllm.testing import tiny_processor
from dreamllm.training import (
    DiffusionImageTransform,
    DocumentEncoder,
    DocumentError,
    DreamLLMDataCollator,
    JsonlDocumentDataset,
)

IGNORE = -100


@pytest.fixture(scope="module")
def processor():
    return tiny_processor()


@pytest.fixture(scope="module")
def encoder(processor):
    return DocumentEncoder(processor)


@pytest.fixture()
def picture():
    return Image.fromarray(np.arange(20 * 30 * 3, dtype=np.uint8).reshape(20, 30, 3))


def token_ids(processor, text):
    return processor.tokenizer(text, add_special_tokens=False)["input_ids"]


def test_interleaved_document_creates_then_reads_each_image(processor, encoder, picture):
    tokenizer = processor.tokenizer
    document = encoder({"segments": [{"text": "A red cat."}, {"image": picture}, {"text": "It sleeps."}]})
    first, second = token_ids(processor, "A red cat."), token_ids(processor, "It sleeps.")
    dream, image = token_ids(processor, processor.dream_block), token_ids(processor, processor.image_block)
    assert document.input_ids == [tokenizer.bos_token_id, *first, *dream, *image, *second, tokenizer.eos_token_id]
    expected_labels = (
        [tokenizer.bos_token_id, *first, tokenizer.dream_start_token_id]
        + [IGNORE] * (len(dream) - 1 + len(image))
        + [*second, tokenizer.eos_token_id]
    )
    assert document.labels == expected_labels
    assert document.images == [picture] and document.dream_images == [picture]


def test_pair_order_decides_creation_or_comprehension(processor, encoder, picture):
    caption = encoder({"segments": [{"image": picture}, {"text": "A red cat."}]})
    creation = encoder({"segments": [{"text": "A red cat."}, {"image": picture}]})
    assert caption.dream_images == [] and caption.images == [picture]
    assert processor.tokenizer.dream_start_token_id not in caption.input_ids
    assert creation.dream_images == [picture] and creation.images == [picture]
    assert creation.labels[-1] == processor.tokenizer.eos_token_id


def test_conversation_learns_only_assistant_turns(processor, encoder, picture):
    tokenizer = processor.tokenizer
    messages = [
        {"role": "user", "content": [{"type": "image", "image": picture}, {"type": "text", "text": "What is it?"}]},
        {"role": "assistant", "content": "A cat."},
        {"role": "user", "content": "Draw a dog."},
        {"role": "assistant", "content": [{"type": "text", "text": "Here:"}, {"type": "image", "image": picture}]},
    ]
    document = encoder({"messages": messages})
    learned = [label for label in document.labels[1:] if label != IGNORE]  # position 0 is never a target
    assert tokenizer.decode([t for t in learned if t != tokenizer.dream_start_token_id]) == "A cat.</s> Here:</s>"
    assert learned.count(tokenizer.dream_start_token_id) == 1
    assert document.images == [picture, picture] and document.dream_images == [picture]
    # Without drawn images, the ids are what the processor gives the rendered conversation at inference.
    text_only = messages[:2]
    rendered = processor.apply_chat_template(text_only, tokenize=False)
    expected = processor(text=rendered, images=[picture])["input_ids"][0]
    assert encoder({"messages": text_only}).input_ids == expected


@pytest.mark.parametrize(
    "record",
    [
        {"segments": "text"},
        {"segments": [{"text": 3}]},
        {"segments": [{"text": "a", "image": "b.png"}]},
        {"segments": [{"text": "a"}], "messages": []},
        {"messages": [{"role": "user"}]},
        {"messages": [{"role": "user", "content": [{"type": "video"}]}]},
        {"messages": [{"role": "robot", "content": "hi"}, {"role": "assistant", "content": "hi"}]},
    ],
)
def test_malformed_records_raise_value_errors(encoder, record):
    with pytest.raises(ValueError):
        encoder(record)


def test_unusable_documents_raise_document_errors(processor):
    encoder = DocumentEncoder(processor, max_length=8)
    for record in ({"segments": []}, {"segments": [{"text": ""}]}, {"messages": [{"role": "user", "content": "hi"}]}):
        with pytest.raises(DocumentError, match="empty document"):
            encoder(record)
    long_question = {"messages": [{"role": "user", "content": "a rather long question " * 4}, {"role": "assistant", "content": "yes"}]}
    with pytest.raises(DocumentError, match="longer than the context"):  # the answer is past the context
        encoder(long_question)
    for text in ("a <image>", "b</s>", "<dream_start>"):
        with pytest.raises(DocumentError, match="special token in text"):
            encoder({"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": text}]})


def test_long_documents_are_truncated_dropping_the_images_that_no_longer_fit(processor, picture):
    tokenizer = processor.tokenizer
    record = {"segments": [{"text": "A red cat."}, {"image": picture}, {"text": "It sleeps on a mat all day long."}]}
    full = DocumentEncoder(processor)(record)
    (start, end, has_dream), = full.image_units
    assert has_dream and full.input_ids[start] == tokenizer.dream_start_token_id

    keeps_image = DocumentEncoder(processor, max_length=end + 3)(record)
    assert keeps_image.truncated and len(keeps_image.input_ids) == end + 3
    assert keeps_image.input_ids[: end + 2] == full.input_ids[: end + 2]
    assert keeps_image.input_ids[-1] == keeps_image.labels[-1] == tokenizer.eos_token_id
    assert keeps_image.images == [picture] and keeps_image.dream_images == [picture]

    drops_image = DocumentEncoder(processor, max_length=end - 5)(record)  # the image's blocks do not fit: all dropped
    assert drops_image.input_ids == full.input_ids[:start] + [tokenizer.eos_token_id]
    assert drops_image.images == drops_image.dream_images == [] and drops_image.truncated
    assert DocumentEncoder(processor, max_length=len(full.input_ids))(record).truncated is False


def write_jsonl(path, records):
    path.write_text("".join(json.dumps(record) + "\n" for record in records), encoding="utf-8")
    return path


def test_jsonl_dataset_is_lazy_and_names_the_line_of_a_bad_item(tmp_path, processor, picture):
    picture.save(tmp_path / "ok.png")
    path = tmp_path / "data.jsonl"
    path.write_text(
        '{"segments": [{"text": "fine"}, {"image": "ok.png"}]}\n\n{"segments": [\n{"segments": [{"image": "gone.png"}]}\n',
        encoding="utf-8",
    )
    dataset = JsonlDocumentDataset(path, processor)
    assert len(dataset) == 3  # blank lines are not documents; nothing was parsed yet
    document = dataset[0]
    assert isinstance(document.images[0], Image.Image) and document.dream_images == document.images
    with pytest.raises(ValueError, match=r"data.jsonl:3: not a DreamLLM document"):
        dataset[1]
    with pytest.raises(DocumentError, match="missing image"):
        dataset[2]
    with pytest.raises(ValueError, match="holds no document"):
        JsonlDocumentDataset(write_jsonl(path, []), processor)
    with pytest.raises(FileNotFoundError):
        JsonlDocumentDataset(tmp_path / "absent.jsonl", processor)


def test_collator_pads_right_and_orders_images_row_major(processor, picture):
    other = picture.transpose(Image.Transpose.FLIP_TOP_BOTTOM)
    collator = DreamLLMDataCollator(processor, diffusion_resolution=8, random_flip=False)
    records = [
        {"segments": [{"text": "A long first document."}, {"image": picture}]},
        {"segments": [{"image": other}, {"text": "Short."}, {"image": picture}]},
    ]
    batch = collator(records)
    lengths = [len(collator.encoder(record).input_ids) for record in records]
    assert batch["input_ids"].shape == (2, max(lengths))
    assert batch["attention_mask"].sum(dim=1).tolist() == lengths
    short = lengths.index(min(lengths))
    assert (batch["input_ids"][short, min(lengths):] == processor.tokenizer.pad_token_id).all()
    assert (batch["labels"][short, min(lengths):] == IGNORE).all()
    expected_pixels = processor.image_processor([picture, other, picture], return_tensors="pt")["pixel_values"]
    torch.testing.assert_close(batch["pixel_values"], expected_pixels)
    transform = DiffusionImageTransform(8)
    torch.testing.assert_close(batch["diffusion_pixel_values"], torch.stack([transform(picture), transform(picture)]))


def test_collator_flips_are_seeded(processor, picture):
    records = [{"segments": [{"text": "A cat."}, {"image": picture}]}] * 8

    def targets(seed):
        return DreamLLMDataCollator(processor, diffusion_resolution=8, seed=seed)(records)["diffusion_pixel_values"]

    first = targets(0)
    torch.testing.assert_close(first, targets(0))
    flipped = [not torch.equal(target, first[0]) for target in first]
    assert any(flipped) and not all(flipped)
    torch.testing.assert_close(first[flipped.index(True)], first[0].flip(-1))


def test_diffusion_transform_resizes_the_short_side_and_crops_the_centre(picture):
    target = DiffusionImageTransform(10)(picture)
    assert target.shape == (3, 10, 10)
    assert -1.0 <= target.min() and target.max() <= 1.0
    reference = picture.resize((15, 10), Image.Resampling.BILINEAR).crop((2, 0, 12, 10))
    expected = torch.from_numpy(np.array(reference)).permute(2, 0, 1).float() / 127.5 - 1
    torch.testing.assert_close(target, expected)


def test_collator_needs_a_resolution_for_images_to_create(processor, picture):
    with pytest.raises(ValueError, match="diffusion_resolution"):
        DreamLLMDataCollator(processor)([{"segments": [{"text": "A cat."}, {"image": picture}]}])


def test_toy_world_samples_load_and_collate(tmp_path, processor):
    from dreamllm import toy_world

    collator = DreamLLMDataCollator(processor, diffusion_resolution=8)
    for kind in toy_world.SAMPLE_KINDS:
        path = toy_world.write_dataset(tmp_path, kind, 3, seed=0)
        dataset = JsonlDocumentDataset(path, processor)
        assert len(dataset) == 3
        batch = collator([dataset[index] for index in range(3)])
        assert (batch["labels"] != IGNORE).any()
