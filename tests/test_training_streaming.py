"""Streaming data: each reader and record layout on a small sample, shards split across processes and workers
exactly once, weighted mixing, a deterministic shuffle, exact resumption with workers, and bad records counted."""

import io
import json

import datasets
import numpy as np
import pytest
import torch
import webdataset
from PIL import Image
from torchdata.stateful_dataloader import StatefulDataLoader

from dreamllm.testing import tiny_processor
from dreamllm.training import DataSource, DocumentStream, DreamLLMDataCollator
from dreamllm.training.streaming import DocumentStreamIterator, skipped_counts

WORDS = ["red", "blue", "green", "circle", "square", "small", "big", "cat", "dog", "tree", "sun", "moon"]


@pytest.fixture(scope="module")
def processor():
    return tiny_processor()


def png(value: int) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(np.full((12, 16, 3), value, dtype=np.uint8)).save(buffer, format="PNG")
    return buffer.getvalue()


def caption(index: int) -> str:
    return f"a {WORDS[index % len(WORDS)]} {WORDS[(index // len(WORDS)) % len(WORDS)]} number {index}"


def write_pair_shards(folder, num_shards, per_shard):
    folder.mkdir(parents=True, exist_ok=True)
    for shard in range(num_shards):
        with webdataset.TarWriter(str(folder / f"pairs-{shard:03d}.tar")) as writer:
            for item in range(per_shard):
                index = shard * per_shard + item
                writer.write({"__key__": f"{index:05d}", "jpg": png(index), "txt": caption(index)})
    return str(folder / ("pairs-{000.." + f"{num_shards - 1:03d}" + "}.tar"))


def texts(stream, count, slot=0, num_slots=1):
    iterator = DocumentStreamIterator(stream, slot, num_slots)
    tokenizer = stream.processor.tokenizer
    documents = [next(iterator) for _ in range(count)]
    return [tokenizer.decode([label for label in d.labels if label >= 0], skip_special_tokens=True).strip()
            for d in documents]


def first_epoch(stream, slot, num_slots):
    """The learned text of what reader `slot` emits in its first epoch (with no shuffling)."""
    iterator, seen = DocumentStreamIterator(stream, slot, num_slots), []
    while True:
        document = next(iterator)
        if iterator.cursors[0].state["epoch"]:
            return seen
        tokens = [label for label in document.labels if label >= 0]
        seen.append(stream.processor.tokenizer.decode(tokens, skip_special_tokens=True).strip())


def test_webdataset_pairs_and_interleaved_shards(tmp_path, processor):
    pattern = write_pair_shards(tmp_path, 2, 3)
    creation = DocumentStream([DataSource(pattern, pairs="creation")], processor, shuffle_buffer=1)
    document = next(iter(creation))
    assert document.dream_images and document.images  # caption, then the picture created and read back
    comprehension = next(iter(DocumentStream([DataSource(pattern, pairs="comprehension")], processor, shuffle_buffer=1)))
    assert not comprehension.dream_images and comprehension.input_ids[1] == processor.tokenizer.image_start_token_id

    with webdataset.TarWriter(str(tmp_path / "docs-000.tar")) as writer:  # the original's interleaved layout
        document_json = {"text_list": ["A red cat.", "It sleeps.", "A blue dog."],
                         "image_info": [{"image_name": "b7.png", "matched_text_index": 2},
                                        {"image_name": "a1.png", "matched_text_index": 0}]}
        writer.write({"__key__": "doc0", "json": document_json, "a1.jpg": png(10), "b7.jpg": png(200)})
    interleaved = next(iter(DocumentStream([str(tmp_path / "docs-000.tar")], processor, shuffle_buffer=1)))
    assert [np.asarray(image)[0, 0, 0] for image in interleaved.dream_images] == [10, 200]
    decoded = processor.tokenizer.decode(interleaved.input_ids)
    assert decoded.index("red cat") < decoded.index("<dream_start>") < decoded.index("sleeps")


def test_mmc4_llava_trl_and_datasets_layouts(tmp_path, processor):
    (tmp_path / "images").mkdir()
    Image.fromarray(np.full((8, 8, 3), 50, dtype=np.uint8)).save(tmp_path / "images" / "x.jpg")
    mmc4 = {"url": "u", "text_list": ["First.", "Second.", "Third."],
            "image_info": [{"image_name": "x.jpg", "matched_text_index": 1, "matched_sim": 0.3}]}
    (tmp_path / "mmc4.jsonl").write_text(json.dumps(mmc4) + "\n")
    document = next(iter(DocumentStream([DataSource(str(tmp_path / "mmc4.jsonl"), image_folder=str(tmp_path / "images"))],
                                        processor, shuffle_buffer=1)))
    decoded = processor.tokenizer.decode(document.input_ids)
    assert decoded.index("Second.") < decoded.index("<dream_start>") < decoded.index("Third.")

    llava = [{"id": "1", "image": "images/x.jpg", "conversations": [
        {"from": "human", "value": "<image>\nWhat is it?"}, {"from": "gpt", "value": "A grey square."}]}]
    (tmp_path / "llava.json").write_text(json.dumps(llava))
    document = next(iter(DocumentStream([str(tmp_path / "llava.json")], processor, shuffle_buffer=1)))
    learned = processor.tokenizer.decode([t for t in document.labels if t >= 0])
    assert "A grey square." in learned and "What is it" not in learned and len(document.images) == 1

    picture = Image.fromarray(np.full((8, 8, 3), 90, dtype=np.uint8))
    trl = datasets.Dataset.from_dict({
        "messages": [[{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "Colour?"}]},
                      {"role": "assistant", "content": [{"type": "text", "text": "Grey."}]}]],
        "images": [[picture]],
    }).cast_column("images", datasets.Sequence(datasets.Image()))
    trl.save_to_disk(str(tmp_path / "trl"))
    trl.to_parquet(str(tmp_path / "trl.parquet"))
    obelics = datasets.Dataset.from_dict({"texts": [["A cat.", None, "It naps."]], "images": [[None, picture, None]]})
    obelics.cast_column("images", datasets.Sequence(datasets.Image())).save_to_disk(str(tmp_path / "obelics"))
    for source in (str(tmp_path / "trl"), str(tmp_path / "trl.parquet")):
        document = next(iter(DocumentStream([source], processor, shuffle_buffer=1)))
        assert np.asarray(document.images[0])[0, 0, 0] == 90 and not document.dream_images
    document = next(iter(DocumentStream([str(tmp_path / "obelics")], processor, shuffle_buffer=1)))
    assert len(document.dream_images) == 1 and "naps" in processor.tokenizer.decode(document.input_ids)


def test_shards_are_split_across_processes_and_workers_exactly_once(tmp_path, processor):
    for num_shards in (4, 2):  # one shard per reader; fewer shards than readers (every reader strides them)
        pattern = write_pair_shards(tmp_path / str(num_shards), num_shards, 12 // num_shards)
        stream = DocumentStream([DataSource(pattern, pairs="creation")], processor, shuffle_buffer=1)
        seen = [text for slot in range(4) for text in first_epoch(stream, slot, 4)]
        assert sorted(seen) == sorted(caption(index) for index in range(12)), num_shards


def test_mixing_follows_the_weights_and_the_shuffle_is_seeded(tmp_path, processor):
    pattern = write_pair_shards(tmp_path / "a", 1, 6)
    (tmp_path / "b.jsonl").write_text("".join(json.dumps({"segments": [{"text": f"plain text {i}"}]}) + "\n" for i in range(5)))
    sources = [DataSource(pattern, weight=3, pairs="creation"), DataSource(str(tmp_path / "b.jsonl"), weight=1)]
    drawn = texts(DocumentStream(sources, processor, shuffle_buffer=8, seed=0), 400)
    share = sum("plain" in text for text in drawn) / len(drawn)
    assert 0.19 < share < 0.31
    same = texts(DocumentStream(sources, processor, shuffle_buffer=8, seed=0), 16)
    other = texts(DocumentStream(sources, processor, shuffle_buffer=8, seed=1), 16)
    assert same == drawn[:16] and other != same
    unshuffled = texts(DocumentStream(sources[:1], processor, shuffle_buffer=1), 6)
    shuffled = texts(DocumentStream(sources[:1], processor, shuffle_buffer=6), 6)
    assert sorted(shuffled) == sorted(unshuffled) and shuffled != unshuffled


def test_resuming_with_workers_continues_exactly(tmp_path, processor):
    pattern = write_pair_shards(tmp_path, 4, 5)
    stream = DocumentStream([pattern], processor, shuffle_buffer=4, seed=3)
    collator = DreamLLMDataCollator(processor, diffusion_resolution=8)

    def loader():
        return StatefulDataLoader(stream, batch_size=2, collate_fn=collator, num_workers=2)

    first = loader()
    batches = iter(first)
    for _ in range(5):
        next(batches)
    state = json.loads(json.dumps(first.state_dict()))  # what a checkpoint stores
    expected = [next(batches) for _ in range(5)]
    resumed = loader()
    resumed.load_state_dict(state)
    for want, got in zip(expected, iter(resumed)):
        assert want.keys() == got.keys()
        for key in want:
            torch.testing.assert_close(got[key], want[key], msg=key)
    assert skipped_counts(state)["documents"] >= 10


def test_bad_records_are_skipped_and_counted_by_reason(tmp_path, processor):
    (tmp_path / "ok.png").write_bytes(png(7))
    (tmp_path / "broken.png").write_bytes(b"not a png")
    lines = [
        json.dumps({"segments": [{"text": "A fine cat."}, {"image": "ok.png"}]}),
        "{not json",
        json.dumps({"segments": [{"text": "A dog."}, {"image": "missing.png"}]}),
        json.dumps({"segments": [{"image": "broken.png"}, {"text": "A bird."}]}),
        json.dumps({"segments": []}),
        json.dumps({"segments": [{"text": "A <dream> here."}]}),
        json.dumps({"title": "no known layout"}),
        json.dumps({"segments": [{"text": "long " * 300}]}),
    ]
    (tmp_path / "data.jsonl").write_text("\n".join(lines) + "\n")
    iterator = DocumentStreamIterator(DocumentStream([str(tmp_path / "data.jsonl")], processor, max_length=200,
                                                     shuffle_buffer=1), 0, 1)
    documents = [next(iterator) for _ in range(2)]  # one pass over the file
    assert len(documents[1].input_ids) == 200 and documents[1].truncated
    assert dict(skipped_counts(iterator.state_dict())) == {
        "documents": 2, "truncated": 1, "malformed record": 1, "missing field": 1, "missing image": 1,
        "unreadable image": 1, "empty document": 1, "special token in text": 1, "document longer than the context": 0,
    }
    (tmp_path / "bad.jsonl").write_text('{"text": "not a document"}\n')
    with pytest.raises(ValueError, match=r"bad.jsonl:1: not a DreamLLM document"):
        DocumentStream([str(tmp_path / "bad.jsonl")], processor)
    with pytest.raises(FileNotFoundError, match="no data file matches"):
        DocumentStream([str(tmp_path / "absent-{0..3}.tar")], processor)
    with pytest.raises(ValueError, match="weight"):
        DataSource.parse("data.jsonl@heavy")


def test_a_stream_of_only_bad_records_fails_naming_the_source_and_reasons(tmp_path, processor):
    (tmp_path / "broken.png").write_bytes(b"not a png")
    lines = [{"segments": [{"text": "A dog."}, {"image": "missing.png"}]},
             {"segments": [{"image": "broken.png"}, {"text": "A bird."}]}]
    (tmp_path / "bad.jsonl").write_text("".join(json.dumps(line) + "\n" for line in lines))
    stream = DocumentStream([str(tmp_path / "bad.jsonl")], processor)  # the default limit, 1000 in a row
    with pytest.raises(ValueError, match=r"bad.jsonl: reader 0 of 1 skipped 1000 records in a row without one usable "
                       r"document \((missing image: 500, unreadable image: 500|unreadable image: 500, missing image: 500)\)"):
        next(iter(stream))
    with webdataset.TarWriter(str(tmp_path / "pairs-000.tar")) as writer:
        for index in range(4):
            writer.write({"__key__": f"{index:05d}", "jpg": b"truncated jpeg", "txt": caption(index)})
    stream = DocumentStream([str(tmp_path / "pairs-000.tar")], processor, max_consecutive_skips=10)
    with pytest.raises(ValueError, match=r"pairs-000.tar: .* skipped 10 records in a row .*\(unreadable image: 10\).*"
                       r"--max-consecutive-skips, now 10"):
        next(iter(stream))


def test_scattered_bad_records_are_tolerated(tmp_path, processor):
    (tmp_path / "ok.png").write_bytes(png(7))
    good = json.dumps({"segments": [{"text": "A fine cat."}, {"image": "ok.png"}]})
    bad = json.dumps({"segments": [{"text": "A dog."}, {"image": "missing.png"}]})
    (tmp_path / "data.jsonl").write_text("\n".join([good, bad, bad, good, bad]) + "\n")
    stream = DocumentStream([str(tmp_path / "data.jsonl")], processor, shuffle_buffer=1, max_consecutive_skips=3)
    iterator = DocumentStreamIterator(stream, 0, 1)
    assert len([next(iterator) for _ in range(20)]) == 20  # never more than 2 bad records in a row, across epochs too
    counts = skipped_counts(iterator.state_dict())
    assert counts["documents"] == 20 and counts["missing image"] == 29
    stream.max_consecutive_skips = 2
    iterator = iter(stream)
    next(iterator)
    with pytest.raises(ValueError, match=r"skipped 2 records in a row .*\(missing image: 2\)"):
        next(iterator)
