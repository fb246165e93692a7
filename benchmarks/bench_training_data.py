"""Training data at corpus scale: time to the first batch and peak memory per process, by reader and corpus size.

For each reader (our JSON Lines, webdataset tar shards, a `datasets` parquet file, MMC4 JSON Lines, LLaVA instruction
JSON) a corpus of N documents is generated locally (cheap synthetic lines: captions of small pictures), then a fresh
process opens it as one rank of two, as `dreamllm train --data` does, and takes one batch of 8 through torchdata's
`StatefulDataLoader` and the collator; the map-style `JsonlDocumentDataset` (a line index of the file) is measured
the same way beside them. A streaming reader's figures stay flat in N.

    python benchmarks/bench_training_data.py --sizes 1000 10000 100000 1000000
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

READERS = ("jsonl", "webdataset", "datasets", "mmc4", "llava", "map-jsonl")
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


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[1000, 10000, 100000])
    parser.add_argument("--readers", nargs="+", default=list(READERS), choices=READERS)
    parser.add_argument("--measure", nargs=2, metavar=("READER", "SOURCE"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.measure:
        print(json.dumps(first_batch(*args.measure)))
        return
    print(f"{'reader':<12} {'documents':>10} {'first batch s':>14} {'peak MB':>9} {'added MB':>9}")
    with tempfile.TemporaryDirectory() as workdir:
        for reader in args.readers:
            for size in args.sizes:
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
