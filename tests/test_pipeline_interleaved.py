"""Interleaved generation with DreamLLMPipeline: documents, one shared cache, batching, randomness, limits, errors."""

import json

import numpy as np
import PIL.Image
import pytest
import torch
from forced_documents import ForceToken, force_dreams, image_block_length
from official_tiny import load_official_tiny_pipeline
from safetensors.torch import load_file
from transformers import LogitsProcessorList, StoppingCriteria, StoppingCriteriaList

from dreamllm.pipelines import document_images
from dreamllm.testing import tiny_pipeline

STEPS = 2


@pytest.fixture()
def pipe():
    pipe = tiny_pipeline(seed=0)
    pipe.set_progress_bar_config(disable=True)
    return pipe


class RecordSequences(StoppingCriteria):
    """Keeps the `input_ids` of the last call (every row's ids so far) and never stops anything."""

    def __call__(self, input_ids, scores, **kwargs):
        self.sequences = input_ids.clone()
        return torch.zeros(input_ids.shape[0], dtype=torch.bool, device=input_ids.device)


def assert_same_documents(first, second, atol=0.0):
    """Same text segments; same images (as arrays, within `atol`)."""
    assert len(first) == len(second)
    for part, other in zip(first, second):
        if isinstance(part, str):
            assert part == other
        else:
            assert np.allclose(np.asarray(part), np.asarray(other), rtol=0, atol=atol)


def test_document_interleaves_text_and_drawn_images(pipe):
    output = pipe(
        "Tell a story with pictures", logits_processor=force_dreams(pipe, {2}), max_new_tokens=8,
        num_inference_steps=STEPS, generator=torch.Generator().manual_seed(0),
    )
    document = output.documents[0]
    assert [type(part) for part in document] == [str, PIL.Image.Image, str]
    assert document[1].size == (32, 32)
    assert output.images == [document[1]]
    assert output.text == [f"{document[0]} <image> {document[2]}"]


def test_prefix_is_never_encoded_again(pipe):
    """LM positions = unconditional pass + prompt + every document id except the last: linear, no re-encoding."""
    config = pipe.model.config
    lengths = []
    pipe.model.model.language_model.register_forward_pre_hook(
        lambda module, args, kwargs: lengths.append(kwargs["inputs_embeds"].shape[1]), with_kwargs=True
    )
    second_dream = 2 + image_block_length(pipe) + 2
    records, max_new_tokens = RecordSequences(), 12
    output = pipe(
        "Tell a story with pictures", logits_processor=force_dreams(pipe, {2, second_dream}),
        stopping_criteria=StoppingCriteriaList([records]), suppress_tokens=[config.text_config.eos_token_id],
        max_new_tokens=max_new_tokens, num_inference_steps=STEPS,
    )
    assert len(output.images) == 2
    prompt_length = len(pipe.processor(text=pipe.prepare_document_prompts("Tell a story with pictures", None, True)[0])
                        .input_ids[0])
    document_length = max_new_tokens + 2 * image_block_length(pipe)
    assert records.sequences.shape[1] == prompt_length + document_length
    unconditional_pass = 1 + config.num_dream_queries + 2
    assert sum(lengths) == unconditional_pass + prompt_length + document_length - 1


def test_batched_rows_write_what_they_write_alone(pipe):
    """
    Rows that draw at different steps, sampled, with one generator per row: each row equals its solo run (images to
    float rounding: the padded batch changes the language model's float sums by ~1e-6).
    """
    prompts = ["Draw a cat", "A much longer prompt about a dog running in a park"]
    offsets = [{1}, {4, 4 + image_block_length(pipe) + 1}]
    settings = {"do_sample": True, "max_new_tokens": 10, "num_inference_steps": STEPS, "output_type": "np"}
    batched = pipe(
        prompts, logits_processor=force_dreams(pipe, *offsets),
        generator=[torch.Generator().manual_seed(1), torch.Generator().manual_seed(2)], **settings,
    )
    for row, (prompt, row_offsets) in enumerate(zip(prompts, offsets)):
        alone = pipe(
            prompt, logits_processor=force_dreams(pipe, row_offsets),
            generator=torch.Generator().manual_seed(row + 1), **settings,
        )
        assert len(alone.images) == len(row_offsets)
        assert_same_documents(batched.documents[row], alone.documents[0], atol=1e-4)
    drawn = [image for document in batched.documents for image in document_images(document)]
    assert batched.images.shape == (3, 32, 32, 3) and np.array_equal(batched.images, np.stack(drawn))


def test_staggered_rows_are_not_padded_to_each_others_blocks(pipe):
    """A pass feeding one row's dream or image block runs on that row alone: no other row is padded to its length."""
    fed = []
    pipe.model.model.language_model.register_forward_pre_hook(
        lambda module, args, kwargs: fed.append(kwargs["inputs_embeds"].shape[:2]), with_kwargs=True
    )
    prompts = ["Draw a cat", "Draw a dog", "Draw a bird"]
    offsets = [{1}, {3}, {5}]
    settings = {"max_new_tokens": 8, "num_inference_steps": STEPS, "suppress_tokens": [pipe.model.config.text_config.eos_token_id]}
    batched = pipe(prompts, logits_processor=force_dreams(pipe, *offsets), **settings)
    block_passes = [shape for shape in fed[1:] if shape[1] > 1][1:]  # after the unconditional pass and the prompts
    assert block_passes and all(rows == 1 for rows, _ in block_passes)
    batch_positions = sum(rows * length for rows, length in fed)
    fed.clear()
    for prompt, row_offsets in zip(prompts, offsets):
        pipe(prompt, logits_processor=force_dreams(pipe, row_offsets), **settings)
    assert batch_positions <= 1.05 * sum(rows * length for rows, length in fed)
    assert [len(document_images(document)) for document in batched.documents] == [1, 1, 1]
    assert batched.images == [image for document in batched.documents for image in document_images(document)]


def test_rows_with_their_own_generators_draw_staggered_images_in_one_denoising_loop(pipe):
    """
    Rows starting images a few passes apart, each with its own generator: one batched UNet loop draws all their images
    (the earlier rows wait), and every row still writes what it writes alone. With image_batch_window=0 each image
    gets its own loop.
    """
    unet_batches = []
    pipe.unet.register_forward_pre_hook(lambda module, args: unet_batches.append(args[0].shape[0]))
    prompts, offsets = ["Draw a cat", "Draw a dog", "Draw a bird"], [{1}, {2}, {4}]
    settings = {"do_sample": True, "max_new_tokens": 8, "num_inference_steps": STEPS, "output_type": "np"}
    generators = lambda: [torch.Generator().manual_seed(seed) for seed in range(len(prompts))]
    batched = pipe(prompts, logits_processor=force_dreams(pipe, *offsets), generator=generators(), **settings)
    assert unet_batches == [2 * len(prompts)] * STEPS
    unet_batches.clear()
    pipe(prompts, logits_processor=force_dreams(pipe, *offsets), generator=generators(), image_batch_window=0,
         **settings)
    assert unet_batches == [2] * STEPS * len(prompts)
    for row, (prompt, row_offsets) in enumerate(zip(prompts, offsets)):
        alone = pipe(prompt, logits_processor=force_dreams(pipe, row_offsets),
                     generator=torch.Generator().manual_seed(row), **settings)
        assert len(alone.images) == 1
        assert_same_documents(batched.documents[row], alone.documents[0], atol=1e-4)


def test_drawn_image_is_conditioned_on_its_own_prefix(pipe):
    """The image equals text-to-image on the dream conditions of exactly the ids before its `<dream_start>`."""
    document_ids = RecordSequences()
    output = pipe("Tell a story", logits_processor=force_dreams(pipe, {3}), max_new_tokens=5,
                  stopping_criteria=StoppingCriteriaList([document_ids]), num_inference_steps=STEPS,
                  generator=torch.Generator().manual_seed(4), output_type="np")
    prompt = pipe.processor(text=pipe.prepare_document_prompts("Tell a story", None, True)[0], return_tensors="pt")
    prefix_ids = document_ids.sequences[:, : prompt.input_ids.shape[1] + 3]
    expected = pipe.text_to_image(
        prompt_embeds=pipe.model.get_dream_conditions(prefix_ids),
        negative_prompt_embeds=pipe.model.get_unconditional_dream_conditions(), num_inference_steps=STEPS,
        generator=torch.Generator().manual_seed(4), output_type="np",
    ).images[0]
    assert np.allclose(output.images[0], expected, atol=1e-4)


def test_batched_prompts_read_their_own_images(pipe):
    pictures = [PIL.Image.new("RGB", (20, 20), color) for color in ("red", "green", "blue")]
    prompts, images = ["One <image> here", "Two", "None"], [pictures[0], pictures[1:], None]
    batched = pipe(prompts, images=images, max_images=0, max_new_tokens=4)
    for row, (prompt, row_images) in enumerate(zip(prompts, images)):
        assert batched.documents[row] == pipe(prompt, images=row_images, max_images=0, max_new_tokens=4).documents[0]


def test_same_seed_same_document_including_sampled_text(pipe):
    def write(seed):
        return pipe(
            ["Once upon a time", "Hello"], do_sample=True, temperature=1.5, max_new_tokens=12,
            logits_processor=force_dreams(pipe, {3}, {5}), num_inference_steps=STEPS,
            generator=torch.Generator().manual_seed(seed),
        ).documents

    first, again, other = write(7), write(7), write(8)
    for row in range(2):
        assert_same_documents(first[row], again[row])
    assert [part for part in first[0] if isinstance(part, str)] != [part for part in other[0] if isinstance(part, str)]


def test_max_images_caps_every_document(pipe):
    always = set(range(100))
    output = pipe("Pictures please", logits_processor=force_dreams(pipe, always), max_images=2, max_new_tokens=8,
                  num_inference_steps=STEPS)
    assert len(output.images) == 2
    assert isinstance(output.documents[0][-1], str)  # once capped, the row writes text
    text_only = pipe("Pictures please", logits_processor=force_dreams(pipe, always), max_images=0, max_new_tokens=4)
    assert text_only.images == []


def test_eos_ends_one_row_and_the_other_goes_on(pipe):
    eos = pipe.model.config.text_config.eos_token_id
    records = RecordSequences()
    force_eos = ForceToken(eos, [{2}, set()], pipe.model.config.pad_token_id)
    pipe(["Short one", "Long one"], logits_processor=LogitsProcessorList([force_eos]),
         stopping_criteria=StoppingCriteriaList([records]), suppress_tokens=[], max_new_tokens=6, max_images=0)
    pad = pipe.model.config.pad_token_id
    lengths = (records.sequences != pad).sum(1) - force_eos.prompt_lengths
    assert lengths.tolist() == [3, 6]


def test_interrupt_ends_the_image_and_the_documents(pipe):
    calls = []

    def interrupt(pipeline, step, timestep, tensors):
        calls.append(step)
        pipeline._interrupt = True
        return tensors

    output = pipe("Draw", logits_processor=force_dreams(pipe, {1}), max_new_tokens=10, num_inference_steps=5,
                  callback_on_step_end=interrupt)
    assert calls == [0]
    assert isinstance(output.documents[0][-1], PIL.Image.Image)


@pytest.mark.parametrize(
    "output_type, kind, shape",
    [("np", np.ndarray, (32, 32, 3)), ("pt", torch.Tensor, (3, 32, 32)), ("latent", torch.Tensor, (4, 8, 8))],
)
def test_document_image_types(pipe, output_type, kind, shape):
    output = pipe("Draw", logits_processor=force_dreams(pipe, {0}), max_new_tokens=3, num_inference_steps=STEPS,
                  output_type=output_type)
    image = output.documents[0][0]
    assert isinstance(image, kind) and tuple(image.shape) == shape


def test_reading_images_matches_model_generate(pipe):
    """Comprehension goes through the same call and decodes greedily exactly as `model.generate`."""
    model, processor, config = pipe.model, pipe.processor, pipe.model.config
    picture = PIL.Image.fromarray(np.random.RandomState(0).randint(0, 255, (20, 24, 3), dtype=np.uint8))
    output = pipe("What is it?", images=picture, max_images=0, max_new_tokens=8, guidance_scale=1)
    messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "What is it?"}]}]
    text = processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    inputs = processor(text=text, images=[picture], return_tensors="pt")
    inserted = [config.image_token_id, config.image_patch_token_id, config.image_start_token_id,
                config.image_end_token_id, config.dream_token_id, config.dream_end_token_id, config.pad_token_id,
                config.dream_start_token_id]
    generated = model.generate(**inputs, max_new_tokens=8, do_sample=False, suppress_tokens=inserted)
    assert output.documents[0] == processor.decode_document(generated[0, inputs.input_ids.shape[1]:])


def test_conversation_prompt_with_image_items(pipe):
    picture = PIL.Image.new("RGB", (20, 20), "red")
    conversation = [{"role": "user", "content": [{"type": "image", "image": picture}, {"type": "text", "text": "Hi"}]}]
    from_messages = pipe(conversation, max_images=0, max_new_tokens=5)
    from_string = pipe("Hi", images=[picture], max_images=0, max_new_tokens=5)
    assert from_messages.documents == from_string.documents


def test_official_greedy_answer_matches_the_original(official_tiny):
    """The decode loop on the fixture's VQA prompt gives the original's 16 greedy tokens."""
    pipe = load_official_tiny_pipeline(official_tiny)
    pipe.set_progress_bar_config(disable=True)
    golden = load_file(official_tiny / "golden" / "generate.safetensors")
    new_tokens = json.loads((official_tiny / "golden" / "meta.json").read_text())["generate"]["new_tokens"]
    prompt = (
        " A chat between a curious user and an artificial intelligence assistant. The assistant gives helpful, "
        "detailed, and polite answers to the user's questions. USER: Based on the image, please answer the question."
        "<image>What is in the image? Answer in one word. ASSISTANT: The answer is:"
    )
    records = RecordSequences()
    image = PIL.Image.open(official_tiny / "inputs" / "image_1.png").convert("RGB")
    pipe(prompt, images=image, use_chat_template=False, max_images=0, max_new_tokens=16, guidance_scale=1,
         stopping_criteria=StoppingCriteriaList([records]))
    assert torch.equal(records.sequences, golden["output_ids"])
    assert records.sequences[0, -16:].tolist() == new_tokens


@pytest.mark.parametrize(
    "arguments, message",
    [
        ({"prompt": "<image> and <image>", "images": [PIL.Image.new("RGB", (8, 8))]}, "2 <image> placeholder"),
        ({"prompt": "no placeholder", "images": [PIL.Image.new("RGB", (8, 8))], "use_chat_template": False},
         "needs a <image> placeholder"),
        ({"prompt": ["a", "b"], "images": [None]}, "one entry per prompt"),
        ({"prompt": "word " * 600}, "model reads at most 512 positions"),
        ({"prompt": "hi", "num_inference_steps": 0}, "num_inference_steps"),
        ({"prompt": "hi", "guidance_scale": -1.0}, "guidance_scale"),
        ({"prompt": "hi", "height": 30}, "multiple of the VAE scale factor 4"),
        ({"prompt": "hi", "max_images": -1}, "max_images"),
        ({"prompt": "hi", "image_batch_window": -1}, "image_batch_window"),
        ({"prompt": "hi", "num_beams": 2}, "num_beams"),
        ({"prompt": "hi", "max_new_tokens": 0}, "max_new_tokens"),
        ({"prompt": "hi", "not_an_argument": 1}, "not_an_argument"),
        ({"prompt": "hi", "generator": [torch.Generator()] * 2}, "2 generators"),
        ({"prompt": 42}, "prompt must be"),
    ],
)
def test_bad_input_is_reported_clearly(pipe, arguments, message):
    with pytest.raises(ValueError, match=message):
        pipe(**arguments)
