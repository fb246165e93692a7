"""Streaming interleaved output: `pipe.stream(...)` events and `pipe(..., streamer=...)` with transformers streamers."""

import gc
import threading
import weakref

import numpy as np
import PIL.Image
import pytest
import torch
from forced_documents import force_dreams, image_block_length
from transformers import LogitsProcessor, LogitsProcessorList, TextIteratorStreamer
from transformers.generation.streamers import BaseStreamer

from dreamllm.modeling_dreamllm.modeling_dreamllm import CACHE_ARGUMENT
from dreamllm.pipelines.streaming import (
    DocumentDone,
    ImageDone,
    ImagePreview,
    ImageStarted,
    SegmentDecoder,
    TextDelta,
)
from dreamllm.testing import tiny_pipeline

STEPS = 2


@pytest.fixture(scope="module")
def pipe():
    pipe = tiny_pipeline(seed=0)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def settings(pipe, *offsets_per_row, seed=0, **overrides):
    """Call arguments that sample text and draw an image at each offset of each row, seeded."""
    return {
        "generator": torch.Generator().manual_seed(seed),
        "logits_processor": force_dreams(pipe, *offsets_per_row),
        "num_inference_steps": STEPS,
        "max_new_tokens": 12,
        "do_sample": True,
        **overrides,
    }


def rebuild_documents(events, batch_size):
    """The documents a chat window shows after the events: text deltas joined per segment, images in place."""
    documents = [[] for _ in range(batch_size)]
    for event in events:
        if isinstance(event, TextDelta):
            document = documents[event.row]
            if document and isinstance(document[-1], str):
                document[-1] += event.text
            else:
                document.append(event.text)
        elif isinstance(event, ImageStarted):
            documents[event.row].append(("drawing", event.index))
        elif isinstance(event, ImageDone):
            assert documents[event.row][-1] == ("drawing", event.index), "an image ends where it started"
            documents[event.row][-1] = event.image
    return documents


def assert_same_documents(actual, expected):
    assert len(actual) == len(expected)
    for actual_document, expected_document in zip(actual, expected):
        assert [type(part) for part in actual_document] == [type(part) for part in expected_document]
        for actual_part, expected_part in zip(actual_document, expected_document):
            if isinstance(expected_part, str):
                assert actual_part == expected_part
            else:
                assert np.array_equal(np.asarray(actual_part), np.asarray(expected_part))


def test_events_rebuild_the_blocking_document(pipe):
    offsets = (2, 6 + image_block_length(pipe))
    events = list(pipe.stream("Tell a story", **settings(pipe, offsets)))
    expected = pipe("Tell a story", **settings(pipe, offsets))

    assert isinstance(events[-1], DocumentDone)
    assert sum(isinstance(event, DocumentDone) for event in events) == 1
    assert [(event.row, event.index) for event in events if isinstance(event, ImageStarted)] == [(0, 0), (0, 1)]
    assert [(event.row, event.index) for event in events if isinstance(event, ImageDone)] == [(0, 0), (0, 1)]
    assert all(event.text for event in events if isinstance(event, TextDelta))
    assert sum(isinstance(event, TextDelta) for event in events) > 3  # the text arrives piece by piece
    assert not any(isinstance(event, ImagePreview) for event in events)  # previews are off by default
    assert_same_documents(rebuild_documents(events, 1), expected.documents)
    done = events[-1].output
    assert done.text == expected.text
    assert_same_documents(done.documents, expected.documents)


def test_batch_events_are_tagged_by_row(pipe):
    prompts = ["Tell a story", "Draw the sea for me"]
    events = list(pipe.stream(prompts, **settings(pipe, (1,), (4,))))
    expected = pipe(prompts, **settings(pipe, (1,), (4,)))

    rows_in_order = [event.row for event in events[:-1]]
    assert set(rows_in_order) == {0, 1}
    first_done = min(rows_in_order.index(0, 0), rows_in_order.index(1, 0))
    assert rows_in_order[first_done:].count(0) and rows_in_order[first_done:].count(1)
    assert [(event.row, event.index) for event in events if isinstance(event, ImageDone)] == [(0, 0), (1, 0)]
    assert_same_documents(rebuild_documents(events, 2), expected.documents)
    assert events[-1].output.text == expected.text


def test_previews_every_n_steps(pipe):
    events = list(pipe.stream("Tell a story", preview_every=1, **settings(pipe, (0,), num_inference_steps=3)))
    previews = [event for event in events if isinstance(event, ImagePreview)]
    assert [(event.row, event.index, event.step) for event in previews] == [(0, 0, 1), (0, 0, 2)]
    assert all(isinstance(event.image, PIL.Image.Image) and event.image.size == (32, 32) for event in previews)
    started, done = (next(i for i, e in enumerate(events) if isinstance(e, kind)) for kind in (ImageStarted, ImageDone))
    assert started < events.index(previews[0]) < events.index(previews[1]) < done


def test_previews_do_not_change_the_document(pipe):
    plain = list(pipe.stream("Tell a story", **settings(pipe, (0,))))[-1].output
    previewed = list(pipe.stream("Tell a story", preview_every=1, **settings(pipe, (0,))))[-1].output
    assert_same_documents(previewed.documents, plain.documents)


def test_text_deltas_never_split_a_character(pipe):
    tokenizer = pipe.processor.tokenizer
    ids = tokenizer.encode("héllo 日本 world, ça va?\n", add_special_tokens=False)
    decoder = SegmentDecoder(tokenizer)
    deltas = [decoder.add(token_id) for token_id in ids] + [decoder.finish()]
    assert "\ufffd" not in "".join(deltas)
    assert "".join(deltas) == "héllo 日本 world, ça va?"
    assert deltas[ids.index(tokenizer.encode("日", add_special_tokens=False)[0])] == ""  # first byte of 日 waits


def test_breaking_out_stops_the_work_and_frees_the_cache(pipe):
    caches = []

    def remember_cache(module, args, kwargs):
        caches.append(weakref.ref(kwargs[CACHE_ARGUMENT]))

    handle = pipe.model.register_forward_pre_hook(remember_cache, with_kwargs=True)
    try:
        def broken_stream():
            for event in pipe.stream("Tell a story", **settings(pipe, (3,), max_new_tokens=40)):
                if isinstance(event, ImageStarted):
                    break

        broken_stream()
        gc.collect()
        live_tensors = sum(torch.is_tensor(thing) for thing in gc.get_objects())
        calls_after_first = len(caches)
        for _ in range(29):
            broken_stream()
        gc.collect()
        assert all(cache() is None for cache in caches)
        assert len(caches) == 30 * calls_after_first  # each stream stopped where it was broken off
        assert sum(torch.is_tensor(thing) for thing in gc.get_objects()) <= live_tensors
    finally:
        handle.remove()


def test_closing_the_generator_frees_the_cache(pipe):
    caches = []
    handle = pipe.model.register_forward_pre_hook(
        lambda module, args, kwargs: caches.append(weakref.ref(kwargs[CACHE_ARGUMENT])), with_kwargs=True
    )
    try:
        events = pipe.stream("Tell a story", **settings(pipe, ()))
        next(events)
        assert caches and caches[-1]() is not None
        events.close()
        assert caches[-1]() is None
        with pytest.raises(StopIteration):
            next(events)
    finally:
        handle.remove()


def test_text_iterator_streamer_in_a_thread(pipe):
    streamer = TextIteratorStreamer(pipe.processor.tokenizer, skip_prompt=True, skip_special_tokens=False, timeout=60)
    result = {}
    kwargs = settings(pipe, (2,), streamer=streamer)
    thread = threading.Thread(target=lambda: result.update(output=pipe("Tell a story", **kwargs)))
    thread.start()
    streamed = "".join(streamer)
    thread.join()
    output = result["output"]
    assert streamed.count(pipe.processor.image_token) == len(output.images) == 1
    eos = pipe.processor.tokenizer.eos_token
    assert "".join(streamed.replace(eos, "").split()) == "".join(output.text[0].split())


class RecordingStreamer(BaseStreamer):
    def __init__(self):
        self.puts, self.ended = [], 0

    def put(self, value):
        self.puts.append(value.tolist())

    def end(self):
        self.ended += 1


class FailAfter(LogitsProcessor):
    def __init__(self, calls):
        self.calls = calls

    def __call__(self, input_ids, scores):
        self.calls -= 1
        if self.calls < 0:
            raise RuntimeError("processor failed")
        return scores


def test_streamer_gets_prompt_then_tokens(pipe):
    streamer = RecordingStreamer()
    output = pipe("Tell a story", streamer=streamer, **settings(pipe, (1,)))
    prompt = pipe.processor(text=pipe.chat_text([{"role": "user", "content": "Tell a story"}])).input_ids
    assert streamer.puts[0] == prompt
    assert [value for value in streamer.puts[1:] if len(value) != 1] == []
    assert [value[0] for value in streamer.puts[1:]].count(pipe.model.config.image_token_id) == len(output.images)
    assert streamer.ended == 1


@pytest.mark.parametrize(
    "arguments, error",
    [
        ({"logits_processor": LogitsProcessorList([FailAfter(3)])}, RuntimeError),
        ({"num_inference_steps": 0}, ValueError),
        ({"prompt": ["one", "two"]}, ValueError),
    ],
    ids=["error-while-writing", "bad-setting", "batch"],
)
def test_streamer_end_is_always_called(pipe, arguments, error):
    streamer = RecordingStreamer()
    prompt = arguments.pop("prompt", "Tell a story")
    with pytest.raises(error):
        pipe(prompt, streamer=streamer, max_new_tokens=8, **arguments)
    assert streamer.ended == 1


def test_streamer_end_on_interrupt(pipe):
    streamer = RecordingStreamer()

    def interrupt(pipeline, step, timestep, tensors):
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        pipe("Tell a story", streamer=streamer, callback_on_step_end=interrupt, **settings(pipe, (1,)))
    assert streamer.ended == 1


@pytest.mark.parametrize(
    "arguments, message",
    [
        ({"preview_every": 0}, "preview_every must be a whole number >= 1"),
        ({"preview_every": True}, "preview_every must be a whole number >= 1"),
        ({"preview_every": 2.5}, "preview_every must be a whole number >= 1"),
        ({"streamer": RecordingStreamer()}, "stream() does not take streamer"),
        ({"return_dict": False}, "stream() does not take return_dict"),
        ({"num_inference_steps": 0}, "num_inference_steps must be a whole number >= 1"),
    ],
)
def test_stream_rejects_bad_arguments_at_once(pipe, arguments, message):
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(")", r"\)")):
        pipe.stream("Tell a story", **arguments)
