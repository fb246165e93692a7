"""Training data: collator throughput at the released 7B model's sizes, and time to the first batch and peak memory
per process by reader and corpus size.

Collator: documents of the 7B model's shapes (a 2048-token context, 256 patches per image block, 64 dream queries, one
comprehension image and one image to create per document, 224 px CLIP pixels, 512 px diffusion targets; the token ids
stay below 32008) are batched by `DreamLLMDataCollator` and, on the same token lists, by transformers'
`DataCollatorForSeq2Seq` (which pads `input_ids`, `attention_mask` and `labels`, the text part of our batch); the
ratio is ours over theirs, on laid-out documents (padding alone) and on records (layout, CLIP and diffusion pixels).

Readers: for each reader (our JSON Lines, webdataset tar shards, a `datasets` parquet file, MMC4 JSON Lines, LLaVA instruction
JSON) a corpus of N documents is generated locally (cheap synthetic lines: captions of small pictures), then a fresh
process opens it as one rank of two, as `dreamllm train --data` does, and takes one batch of 8 through torchdata's
`StatefulDataLoader` and the collator; the map-style `JsonlDocumentDataset` (a line index of the file) is measured
the same way beside them. A streaming reader's figures stay flat in N.

    nice python benchmarks/bench_training_data.py --sizes 1000 10000 100000 1000000 --batch-sizes 1 4 8
"""

import argparse
import io
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

READERS = ("jsonl", "webdataset", "datasets", "mmc4", "llava", "trl", "map-jsonl")
PICTURES = 16  # distinct image files the documents point to


def picture_bytes(value: int) -> bytes:
    import numpy as np
    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(np.full((16, 16, 3), value, dtype=np.uint8)).save(buffer, format="PNG")
    return buffer.getvalue()


def caption(index: int) -> str:
    return f"a small picture number {index} of a red square"


def write_corpus(reader: str, size: int, folder: Path) -> str:
    """Writes `size` documents for `reader` under `folder`; returns the `--data` source."""
    folder.mkdir(parents=True, exist_ok=True)
    images = folder / "images"
    images.mkdir(exist_ok=True)
    for value in range(PICTURES):
        (images / f"{value}.png").write_bytes(picture_bytes(value * 15))
    if reader in ("jsonl", "map-jsonl"):
        line = '{{"segments": [{{"text": "{text}"}}, {{"image": "images/{image}.png"}}]}}\n'
        write_lines(folder / "docs.jsonl", (line.format(text=caption(i), image=i % PICTURES) for i in range(size)))
        return str(folder / "docs.jsonl")
    if reader == "mmc4":
        def mmc4(i):
            return json.dumps({"text_list": [caption(i), "and more words"],
                               "image_info": [{"image_name": f"images/{i % PICTURES}.png", "matched_text_index": 1}]}) + "\n"
        write_lines(folder / "mmc4.jsonl", (mmc4(i) for i in range(size)))
        return f"jsonl:{folder / 'mmc4.jsonl'}"
    if reader == "trl":
        def trl(i):
            return json.dumps({"images": [f"images/{i % PICTURES}.png"], "messages": [
                {"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "What is it?"}]},
                {"role": "assistant", "content": [{"type": "text", "text": caption(i)}]}]}) + "\n"
        write_lines(folder / "trl.jsonl", (trl(i) for i in range(size)))
        return str(folder / "trl.jsonl")
    if reader == "llava":
        def llava(i):
            return json.dumps({"id": str(i), "image": f"images/{i % PICTURES}.png", "conversations": [
                {"from": "human", "value": "<image>\nWhat is it?"}, {"from": "gpt", "value": caption(i)}]})
        write_lines(folder / "llava.json", ("[", ",\n".join(llava(i) for i in range(size)), "]"))
        return str(folder / "llava.json")
    if reader == "webdataset":
        import webdataset

        per_shard = 10_000
        for shard in range(max(1, -(-size // per_shard))):
            with webdataset.TarWriter(str(folder / f"pairs-{shard:05d}.tar")) as writer:
                for index in range(shard * per_shard, min(size, (shard + 1) * per_shard)):
                    writer.write({"__key__": f"{index:08d}", "png": picture_bytes(index % PICTURES), "txt": caption(index)})
        return str(folder / "pairs-*.tar")
    if reader == "datasets":
        import pyarrow as pa
        import pyarrow.parquet as pq

        pictures = [{"bytes": picture_bytes(value * 15), "path": None} for value in range(PICTURES)]
        texts = [[caption(i), None] for i in range(size)]
        image_lists = [[None, pictures[i % PICTURES]] for i in range(size)]
        pq.write_table(pa.table({"texts": texts, "images": image_lists}), folder / "obelics.parquet")
        return str(folder / "obelics.parquet")
    raise ValueError(f"unknown reader {reader!r}")


def write_lines(path: Path, lines):
    with open(path, "w") as file:
        file.writelines(lines)


def first_batch(reader: str, source: str) -> dict:
    """In this process: opens `source` as rank 0 of 2 and takes one batch of 8; seconds and peak memory."""
    start = time.perf_counter()
    from torchdata.stateful_dataloader import StatefulDataLoader

    from dreamllm.testing import tiny_processor
    from dreamllm.training import DocumentStream, DreamLLMDataCollator, JsonlDocumentDataset

    processor = tiny_processor()
    memory_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    opened = time.perf_counter()
    if reader == "map-jsonl":
        dataset = JsonlDocumentDataset(source, processor)
        batch = DreamLLMDataCollator(processor, diffusion_resolution=32)([dataset[index] for index in range(8)])
    else:
        stream = DocumentStream([source], processor, shuffle_buffer=1000).split(0, 2)
        loader = StatefulDataLoader(stream, batch_size=8, collate_fn=DreamLLMDataCollator(processor, diffusion_resolution=32))
        batch = next(iter(loader))
    seconds = time.perf_counter() - opened
    memory_after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    assert batch["input_ids"].shape[0] == 8
    return {"seconds": seconds, "peak_mb": memory_after / 1024, "added_mb": (memory_after - memory_before) / 1024,
            "setup_seconds": opened - start}


CONTEXT, IMAGE_PATCHES, DREAM_QUERIES, VOCAB = 2048, 256, 64, 32008  # the released 7B model


def seven_b_processor():
    """A processor with the 7B model's block lengths and CLIP image size (the tiny tokenizer: no download)."""
    from transformers import CLIPImageProcessorPil

    from dreamllm.processing import DreamLLMProcessor
    from dreamllm.testing import build_tiny_tokenizer

    return DreamLLMProcessor(image_processor=CLIPImageProcessorPil(), tokenizer=build_tiny_tokenizer(),
                             num_image_tokens=IMAGE_PATCHES, num_dream_queries=DREAM_QUERIES)


def seven_b_records(processor, count: int) -> list[dict]:
    """
    `count` documents that fill the context: a picture to read, words, a picture to create, words (the words are
    decoded from token ids so that the document's length is the context's within a few special tokens).
    """
    import numpy as np
    from PIL import Image

    generator = np.random.default_rng(0)
    picture = Image.fromarray(generator.integers(0, 256, (256, 256, 3), dtype=np.uint8))
    tokenizer = processor.tokenizer
    text_tokens = (CONTEXT - 2 * (IMAGE_PATCHES + 2) - (DREAM_QUERIES + 2) - 8) // 2
    records = []
    for index in range(count):
        words = " ".join(f"word{(index + step) % 97} picture" for step in range(CONTEXT))
        ids = tokenizer(words, add_special_tokens=False)["input_ids"]
        halves = [tokenizer.decode(ids[start : start + text_tokens]) for start in (0, text_tokens)]
        records.append({"segments": [{"image": picture}, {"text": halves[0]}, {"image": picture}, {"text": halves[1]}]})
    return records


def collator_throughput(batch_sizes: list[int], repeats: int) -> None:
    """
    Prints samples/s per batch size: padding alone (our collator on laid-out documents without pictures, against
    `DataCollatorForSeq2Seq` on their token lists), and whole batches (ours from records, against Seq2Seq padding
    plus `CLIPImageProcessor` on the same pictures), with the ratios ours / theirs.
    """
    import dataclasses

    from transformers import DataCollatorForSeq2Seq

    from dreamllm.training import DocumentEncoder, DreamLLMDataCollator

    processor = seven_b_processor()
    ours = DreamLLMDataCollator(processor, diffusion_resolution=512, max_length=CONTEXT)
    encoder = DocumentEncoder(processor, max_length=CONTEXT)
    padding = DataCollatorForSeq2Seq(processor.tokenizer, padding="longest", return_tensors="pt")

    def theirs(items):
        features, pictures = items
        return {**padding(features), **processor.image_processor(pictures, return_tensors="pt")}

    print(f"{'batch':>5} {'tokens/doc':>10} {'ours pad':>9} {'Seq2Seq':>9} {'ratio':>6} {'ours full':>10} "
          f"{'Seq2Seq+CLIP':>13} {'ratio':>6}   (samples/s)")
    for batch_size in batch_sizes:
        records = seven_b_records(processor, batch_size)
        documents = [encoder(record) for record in records]
        assert max(max(document.input_ids) for document in documents) < VOCAB
        text_only = [dataclasses.replace(document, images=[], dream_images=[]) for document in documents]
        features = [{"input_ids": document.input_ids, "attention_mask": [1] * len(document.input_ids),
                     "labels": document.labels} for document in documents]
        pictures = [picture for document in documents for picture in document.images]
        ours_pad, their_pad, ours_full, their_full = (
            batch_size / best_seconds(collate, items, repeats)
            for collate, items in ((ours, text_only), (padding, features), (ours, records), (theirs, (features, pictures)))
        )
        length = sum(len(document.input_ids) for document in documents) // batch_size
        print(f"{batch_size:>5} {length:>10} {ours_pad:>9.0f} {their_pad:>9.0f} {ours_pad / their_pad:>6.2f} "
              f"{ours_full:>10.1f} {their_full:>13.1f} {ours_full / their_full:>6.2f}", flush=True)


def best_seconds(collate, items: list, repeats: int) -> float:
    timings = []
    for _ in range(repeats):
        start = time.perf_counter()
        collate(items)
        timings.append(time.perf_counter() - start)
    return min(timings)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[1000, 10000, 100000])
    parser.add_argument("--readers", nargs="+", default=list(READERS), choices=READERS)
    parser.add_argument("--part", choices=("collator", "readers", "both"), default="both")
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 4, 8])
    parser.add_argument("--repeats", type=int, default=5, help="collator calls per figure (the fastest counts)")
    parser.add_argument("--measure", nargs=2, metavar=("READER", "SOURCE"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.measure:
        print(json.dumps(first_batch(*args.measure)))
        return
    if args.part in ("collator", "both"):
        collator_throughput(args.batch_sizes, args.repeats)
    if args.part in ("readers", "both"):
        reader_figures(args.sizes, args.readers)


def reader_figures(sizes: list[int], readers: list[str]) -> None:
    """Prints time to the first batch and peak memory of a fresh process per reader and corpus size."""
    print(f"{'reader':<12} {'documents':>10} {'first batch s':>14} {'peak MB':>9} {'added MB':>9}")
    with tempfile.TemporaryDirectory() as workdir:
        for reader in readers:
            for size in sizes:
                source = write_corpus(reader, size, Path(workdir) / f"{reader}-{size}")
                measured = subprocess.run([sys.executable, __file__, "--measure", reader, source],
                                          capture_output=True, text=True)
                if measured.returncode:
                    print(f"{reader:<12} {size:>10} failed: {measured.stderr.strip().splitlines()[-1]}", flush=True)
                    continue
                figures = json.loads(measured.stdout.strip().splitlines()[-1])
                print(f"{reader:<12} {size:>10} {figures['seconds']:>14.3f} {figures['peak_mb']:>9.0f} "
                      f"{figures['added_mb']:>9.0f}", flush=True)


if __name__ == "__main__":
    main()
