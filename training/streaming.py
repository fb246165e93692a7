"""`DocumentStream`: a weighted mix of sources, split across processes and workers, shuffled, and resumable exactly.

How documents flow, on each of the `world_size x num_workers` readers (one per DataLoader worker of each process):

1. **Shards.** Each source's shards are put in a seeded order, new every epoch; reader `k` of `K` takes every `K`-th
   shard of that order, so each shard is read by exactly one reader per epoch. A source with fewer shards than
   readers is read whole by every reader, each keeping every `K`-th example. A reader that finishes its shards starts
   the next epoch of that source: the stream never ends, every process gets the same number of batches, and
   `max_steps` ends training.
2. **Mixing.** Examples are drawn from the sources in blocks of `shuffle_buffer`: which source each draw takes comes
   from the weights and a seed of (seed, reader, block).
3. **Shuffling.** Each block is emitted in a seeded permutation (a deterministic shuffle buffer).
4. **Documents.** Each emitted example is mapped to a record (`dreamllm.training.sources`), laid out and its images
   loaded; one that cannot be used is counted by reason and skipped, a document longer than the context is truncated
   (counted as "truncated"). Scattered bad records are tolerated, but after `max_consecutive_skips` records in a row
   that could not be used the reader raises a `ValueError` naming the sources and the reasons: a corpus whose images
   are all unreadable fails at once instead of never yielding a batch.

The state of a reader is where its current block started (per-source epoch, shard and position), how much of the block
was emitted, and the counts. Resuming re-reads that one block and skips what was emitted: no document is trained on
twice, none is skipped, and the following batches are those of the uninterrupted run. With torchdata's
`StatefulDataLoader` (which [`DreamLLMTrainer`] uses for streams) the states of all workers go into each checkpoint.
"""

import copy
import hashlib
import logging
from collections import Counter

import torch

from dreamllm.processing import DreamLLMProcessor

from .data import DocumentEncoder, DocumentError, EncodedDocument, load_document_images
from .sources import DataSource, ShardReader, to_record

logger = logging.getLogger(__name__)

SKIP_REASONS = (
    "malformed record",
    "missing field",
    "missing image",
    "unreadable image",
    "empty document",
    "special token in text",
    "document longer than the context",
)
COUNTED = ("documents", "truncated", *SKIP_REASONS)
STATE_VERSION = 1
MAX_CONSECUTIVE_SKIPS = 1000


def derived_seed(*numbers: int) -> int:
    """A 63-bit seed that depends on every number given (the same on every process and after resuming)."""
    digest = hashlib.blake2b(repr(numbers).encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") >> 1


class DocumentStream(torch.utils.data.IterableDataset):
    """
    An endless stream of [`EncodedDocument`]s from weighted [`DataSource`]s (see the module docstring).

    Args:
        sources (`list[DataSource | str]`): The corpora; strings are parsed by [`DataSource.parse`].
        processor ([`DreamLLMProcessor`]): Lays the documents out.
        max_length (`int`, *optional*): Context length; longer documents are truncated.
        seed (`int`, *optional*, defaults to 0): Seed of shard orders, mixing, shuffling and per-document draws.
        shuffle_buffer (`int`, *optional*, defaults to 1000): Examples per shuffled block (1: no shuffling).
        rank, world_size (`int`, *optional*): This process and the number of processes (default: from
            `torch.distributed` when it is initialized, else 0 and 1). [`DreamLLMTrainer`] sets them.
        max_consecutive_skips (`int`, *optional*, defaults to 1000): How many records in a row a reader may skip
            before it raises a `ValueError` (with the counts by reason) instead of reading on.

    Raises:
        `ValueError` or `FileNotFoundError`: when a source matches no file or its first example has no known layout;
            while iterating, a `ValueError` after `max_consecutive_skips` unusable records in a row.
    """

    def __init__(
        self,
        sources: list[DataSource | str],
        processor: DreamLLMProcessor,
        max_length: int | None = None,
        seed: int = 0,
        shuffle_buffer: int = 1000,
        rank: int | None = None,
        world_size: int | None = None,
        max_consecutive_skips: int = MAX_CONSECUTIVE_SKIPS,
    ):
        if not sources:
            raise ValueError("a DocumentStream needs at least one source")
        for name, value in (("shuffle_buffer", shuffle_buffer), ("max_consecutive_skips", max_consecutive_skips)):
            if not (isinstance(value, int) and value >= 1):
                raise ValueError(f"{name} must be a positive integer, got {value!r}")
        self.sources = [source if isinstance(source, DataSource) else DataSource.parse(source) for source in sources]
        self.processor = processor
        self.max_length = max_length
        self.seed = seed
        self.shuffle_buffer = shuffle_buffer
        self.max_consecutive_skips = max_consecutive_skips
        self.rank, self.world_size = rank, world_size
        for source in self.sources:
            self.check_first_example(source)

    def check_first_example(self, source: DataSource):
        """Maps the first example of `source`, so that a wrong format fails before training, naming the file."""
        example, resolver, location = source.open().peek()
        try:
            to_record(example, resolver, source.pairs)
        except DocumentError as error:
            if error.reason in ("malformed record", "missing field"):
                raise ValueError(f"{location}: not a DreamLLM document: {error}") from error

    def split(self, rank: int, world_size: int) -> "DocumentStream":
        """Sets which process this is of how many; returns the stream."""
        self.rank, self.world_size = rank, world_size
        return self

    def process_layout(self) -> tuple[int, int]:
        if self.world_size is not None:
            return self.rank, self.world_size
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            return torch.distributed.get_rank(), torch.distributed.get_world_size()
        return 0, 1

    def __iter__(self) -> "DocumentStreamIterator":
        rank, world_size = self.process_layout()
        worker = torch.utils.data.get_worker_info()
        worker_id, num_workers = (worker.id, worker.num_workers) if worker is not None else (0, 1)
        return DocumentStreamIterator(self, rank * num_workers + worker_id, world_size * num_workers)


class SourceCursor:
    """Where one reader is in one source: epoch, index in its list of shards for that epoch, position in the shard."""

    def __init__(self, stream: DocumentStream, index: int, reader: ShardReader, slot: int, num_slots: int):
        self.stream, self.index, self.reader = stream, index, reader
        self.slot, self.num_slots = slot, num_slots
        self.all_shards = reader.shards(num_slots)
        self.state = {"epoch": 0, "shard": 0, "position": None}
        self.examples = None
        self.empty_epochs = 0

    def my_shards(self, epoch: int) -> list[tuple[object, int]]:
        """This reader's `(shard, stride offset)` pairs for `epoch`; a stride offset of -1 reads the whole shard."""
        generator = torch.Generator().manual_seed(derived_seed(self.stream.seed, self.index, epoch))
        order = [self.all_shards[i] for i in torch.randperm(len(self.all_shards), generator=generator).tolist()]
        if len(order) >= self.num_slots:
            return [(shard, -1) for shard in order[self.slot :: self.num_slots]]
        return [(shard, self.slot) for shard in order]

    def load(self, state: dict):
        self.state, self.examples = dict(state), None

    def next_example(self):
        """The next example of this reader in this source (starting the next epoch when one ends)."""
        while True:
            if self.examples is None:
                shards = self.my_shards(self.state["epoch"])
                if self.state["shard"] >= len(shards):
                    self.start_next_epoch()
                    continue
                shard, offset = shards[self.state["shard"]]
                self.examples = self.strided(self.reader.read(shard, self.state["position"]), offset)
            item = next(self.examples, None)
            if item is None:
                self.state = {"epoch": self.state["epoch"], "shard": self.state["shard"] + 1, "position": None}
                self.examples = None
                continue
            position, example, resolver = item
            self.state["position"] = position
            self.empty_epochs = 0
            return example, resolver

    def start_next_epoch(self):
        """Moves to the next epoch; raises a `ValueError` after two epochs in a row without any example."""
        self.empty_epochs += 1
        if self.empty_epochs > 2:
            raise ValueError(
                f"{self.stream.sources[self.index].path} gives reader {self.slot} of {self.num_slots} no example: "
                "it has fewer examples than there are processes x workers, or none"
            )
        self.state = {"epoch": self.state["epoch"] + 1, "shard": 0, "position": None}

    def strided(self, examples, offset: int):
        """Every `num_slots`-th example from `offset` (all of them for -1), counting from the shard's start."""
        if offset < 0:
            yield from examples
            return
        for count_after, example, resolver in examples:
            if (count_after - 1) % self.num_slots == offset:
                yield count_after, example, resolver


class DocumentStreamIterator:
    """One reader's iterator over a [`DocumentStream`], with `state_dict` / `load_state_dict` (torchdata's Stateful)."""

    def __init__(self, stream: DocumentStream, slot: int, num_slots: int):
        self.stream, self.slot, self.num_slots = stream, slot, num_slots
        self.cursors = [
            SourceCursor(stream, index, source.open(), slot, num_slots) for index, source in enumerate(stream.sources)
        ]
        self.encoder = DocumentEncoder(stream.processor, max_length=stream.max_length)
        self.weights = torch.tensor([source.weight for source in stream.sources], dtype=torch.float64)
        self.block_index, self.emitted = 0, 0
        self.block_start = [copy.deepcopy(cursor.state) for cursor in self.cursors]
        self.block: list | None = None
        self.counts = Counter()
        self.skip_run: Counter = Counter()  # (source path, reason) of the records skipped since the last document

    def __iter__(self):
        return self

    def state_dict(self) -> dict:
        block_index, emitted, block_start = self.block_index, self.emitted, self.block_start
        if self.block is not None and emitted == len(self.block):  # the next block starts where this one ended
            block_index, emitted = block_index + 1, 0
            block_start = [cursor.state for cursor in self.cursors]
        return {
            "version": STATE_VERSION,
            "reader": self.slot,
            "readers": self.num_slots,
            "block": block_index,
            "emitted": emitted,
            "sources": copy.deepcopy(block_start),
            "counts": {name: self.counts[name] for name in COUNTED},
        }

    def load_state_dict(self, state: dict):
        if (state.get("version"), state.get("reader"), state.get("readers")) != (STATE_VERSION, self.slot, self.num_slots):
            raise ValueError(
                f"the saved data state is of reader {state.get('reader')} of {state.get('readers')}, this is reader "
                f"{self.slot} of {self.num_slots}: resume with the same number of processes and --num-workers"
            )
        self.block_index, self.emitted = state["block"], state["emitted"]
        self.block_start = copy.deepcopy(state["sources"])
        for cursor, cursor_state in zip(self.cursors, self.block_start, strict=True):
            cursor.load(cursor_state)
        self.counts = Counter(state["counts"])
        self.block = None

    def fill_block(self):
        """Reads the examples of the current block and its permutation (from the block-start cursors)."""
        size = self.stream.shuffle_buffer
        seed = derived_seed(self.stream.seed, self.slot, self.block_index)
        choices = torch.multinomial(self.weights, size, replacement=True, generator=torch.Generator().manual_seed(seed))
        examples = []
        for choice in choices.tolist():
            cursor = self.cursors[choice]
            examples.append((choice, *cursor.next_example()))
        order = torch.randperm(size, generator=torch.Generator().manual_seed(seed + 1)).tolist()
        self.block = [examples[index] for index in order]

    def __next__(self) -> EncodedDocument:
        while True:
            if self.block is None:
                self.fill_block()
            if self.emitted == len(self.block):
                self.block_index, self.emitted, self.block = self.block_index + 1, 0, None
                self.block_start = [copy.deepcopy(cursor.state) for cursor in self.cursors]
                continue
            position = self.emitted
            self.emitted += 1
            document = self.prepare(*self.block[position], derived_seed(self.stream.seed, self.slot, self.block_index, position))
            if document is not None:
                return document

    def prepare(self, source_index: int, example, resolver, seed: int) -> EncodedDocument | None:
        """The document of an example, or `None` (counted by reason) when it cannot be used."""
        source = self.stream.sources[source_index]
        coin_generator = torch.Generator().manual_seed(seed)
        try:
            record = to_record(example, resolver, source.pairs, lambda: bool(torch.rand(1, generator=coin_generator) < 0.5))
            document = load_document_images(self.encoder(record))
        except DocumentError as error:
            self.count(error.reason, source, error)
            return None
        except ValueError as error:
            self.count("malformed record", source, error)
            return None
        document.seed = seed
        self.skip_run.clear()
        self.counts["documents"] += 1
        self.counts["truncated"] += document.truncated
        return document

    def count(self, reason: str, source: DataSource, error: Exception):
        """Counts a skipped record; raises a `ValueError` when it ends a run of `max_consecutive_skips` of them."""
        self.counts[reason] += 1
        self.skip_run[source.path, reason] += 1
        logger.debug("%s: skipped a record (%s): %s", source.path, reason, error)
        if self.skip_run.total() >= self.stream.max_consecutive_skips:
            raise ValueError(self.skip_run_message())

    def skip_run_message(self) -> str:
        paths = ", ".join(dict.fromkeys(path for path, _ in self.skip_run))
        reasons = Counter()
        for (_, reason), number in self.skip_run.items():
            reasons[reason] += number
        counts = ", ".join(f"{reason}: {number}" for reason, number in reasons.most_common())
        return (
            f"{paths}: reader {self.slot} of {self.num_slots} skipped {self.skip_run.total()} records in a row "
            f"without one usable document ({counts}); fix the data, or raise max_consecutive_skips "
            f"(--max-consecutive-skips, now {self.stream.max_consecutive_skips})"
        )


def skipped_counts(state) -> Counter:
    """The sum of the counts of every reader state found in `state` (a stream iterator's or a dataloader's)."""
    total = Counter()
    if isinstance(state, dict):
        if state.get("version") == STATE_VERSION and "counts" in state and "readers" in state:
            total.update(state["counts"])
        else:
            for value in state.values():
                total.update(skipped_counts(value))
    elif isinstance(state, list):
        for value in state:
            total.update(skipped_counts(value))
    return total


__all__ = ["COUNTED", "SKIP_REASONS", "DocumentStream", "skipped_counts"]
