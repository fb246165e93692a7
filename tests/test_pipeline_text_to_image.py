"""DreamLLMPipeline.text_to_image: parity with the original implementation, batching, diffusers conventions, errors."""

import io
import json

import numpy as np
import PIL.Image
import pytest
import torch
from diffusers import DDIMScheduler, EulerDiscreteScheduler
from official_tiny import load_official_tiny_pipeline
from safetensors.torch import load_file

from dreamllm import DreamLLMPipeline
from dreamllm.testing import tiny_pipeline

LATENT_ATOL = 1e-3
IMAGE_ATOL = 1e-3
STEPS = 3


@pytest.fixture(scope="module")
def official(official_tiny):
    """The fixture's pipeline, its text-to-image goldens, the original's conditions, and the recorded calls."""
    pipe = load_official_tiny_pipeline(official_tiny)
    pipe.set_progress_bar_config(disable=True)
    golden = load_file(official_tiny / "golden" / "t2i_pipeline.safetensors")
    conditions = load_file(official_tiny / "golden" / "t2i_condition.safetensors")
    calls = json.loads((official_tiny / "golden" / "meta.json").read_text())["t2i_pipeline"]
    return pipe, golden, conditions, calls


@pytest.fixture()
def pipe():
    pipe = tiny_pipeline(seed=0)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def run_like_the_original(pipe, call, **overrides):
    """The fixture's call (10 DDPM steps, guidance 3.5, CPU generator), recording the latents after every step."""
    steps = []

    def record(pipeline, step, timestep, tensors):
        steps.append(tensors["latents"].clone())
        return tensors

    arguments = {
        "prompt": call["prompt"], "negative_prompt": call["negative_prompt"],
        "num_inference_steps": call["num_inference_steps"], "guidance_scale": call["guidance_scale"],
        "generator": torch.Generator(call["generator_device"]).manual_seed(call["generator_seed"]),
        "output_type": "pt", "callback_on_step_end": record,
    }
    images = pipe.text_to_image(**{**arguments, **overrides}).images
    return torch.stack(steps), images


def max_diff(actual, expected):
    return (actual - expected).abs().max().item()


def test_single_prompt_with_negative_prompt_reproduces_the_original(official):
    pipe, golden, _, calls = official
    call = calls["single_neg"]["call"]
    steps, images = run_like_the_original(pipe, call)
    assert pipe.scheduler.timesteps.tolist() == golden["single_neg.timesteps"].tolist()
    assert max_diff(steps, golden["single_neg.latents_per_step"]) <= LATENT_ATOL
    assert images.shape == (1, 3, 128, 128)
    processor = pipe.vae_image_processor
    uint8 = np.asarray(processor.numpy_to_pil(processor.pt_to_numpy(images))[0]).astype(int)
    assert np.abs(uint8 - golden["single_neg.image_uint8"][0].numpy().astype(int)).max() <= 1


def test_batch_reproduces_the_original_on_the_long_prompt(official):
    """
    The original right-padded the batch and positioned the dream queries after the padding, so its short row (p1)
    drifted from its single-prompt value (spec 10.6). We position every row from its own tokens: the long row (p2)
    matches the original exactly, the short row matches what the original gives with our (single-prompt) condition.
    """
    pipe, golden, conditions, calls = official
    call = calls["batch"]["call"]
    steps, images = run_like_the_original(pipe, call)
    assert max_diff(steps[:, 1], golden["batch.latents_per_step"][:, 1]) <= LATENT_ATOL
    assert max_diff(images[1], golden["batch.image_float"][1]) <= IMAGE_ATOL
    assert max_diff(steps[:, 0], golden["batch.latents_per_step"][:, 0]) > 0.1  # the original's drift

    ours = pipe.encode_prompt(call["prompt"], pipe.device, 1, False)[0]
    single_prompts = torch.cat([conditions["p1.projected"], conditions["p2.projected"]])
    assert max_diff(ours, single_prompts) <= 1e-4
    drifted = conditions["batch_right.projected"]
    original_steps = run_like_the_original(pipe, call, prompt=None, prompt_embeds=drifted, output_type="latent")[0]
    assert max_diff(original_steps, golden["batch.latents_per_step"]) <= LATENT_ATOL


def test_images_per_prompt_equal_separate_runs_with_their_generators(pipe):
    """The original crashed for num_images_per_prompt > 1; image i equals a single run with generator i."""
    seeds = [[1, 2], [3, 4]]
    generators = [torch.Generator().manual_seed(seed) for row in seeds for seed in row]
    images = pipe.text_to_image(["a cat", "a dog"], num_images_per_prompt=2, generator=generators,
                                num_inference_steps=STEPS, output_type="np").images
    assert images.shape == (4, 32, 32, 3)
    for index, (prompt, seed) in enumerate([(p, s) for p, row in zip(["a cat", "a dog"], seeds) for s in row]):
        alone = pipe.text_to_image(prompt, generator=torch.Generator().manual_seed(seed), num_inference_steps=STEPS,
                                   output_type="np").images
        assert np.allclose(images[index], alone[0], atol=1e-5)


def test_negative_prompt_changes_the_image_and_embeds_are_equivalent(pipe):
    def draw(**arguments):
        return pipe.text_to_image(generator=torch.Generator().manual_seed(0), num_inference_steps=STEPS,
                                  output_type="latent", **arguments).images

    plain, negative = draw(prompt="a cat"), draw(prompt="a cat", negative_prompt="blurry")
    assert max_diff(plain, negative) > 1e-3
    prompt_embeds, negative_embeds = pipe.encode_prompt("a cat", pipe.device, 1, True, "blurry")
    from_embeds = draw(prompt_embeds=prompt_embeds, negative_prompt_embeds=negative_embeds)
    assert torch.equal(from_embeds, negative)


def test_guidance_off_uses_no_unconditional_branch(pipe):
    batch_sizes = []
    pipe.unet.register_forward_pre_hook(lambda module, args: batch_sizes.append(args[0].shape[0]))
    pipe.text_to_image("a cat", guidance_scale=1.0, num_inference_steps=2, output_type="latent")
    pipe.text_to_image("a cat", guidance_scale=2.0, num_inference_steps=2, output_type="latent")
    assert batch_sizes == [1, 1, 2, 2]


def test_output_types_agree(pipe):
    def draw(output_type):
        return pipe.text_to_image("a cat", generator=torch.Generator().manual_seed(0), num_inference_steps=STEPS,
                                  output_type=output_type).images

    pil, array, tensor, latents = draw("pil"), draw("np"), draw("pt"), draw("latent")
    assert isinstance(pil[0], PIL.Image.Image) and pil[0].size == (32, 32)
    assert array.shape == (1, 32, 32, 3) and tensor.shape == (1, 3, 32, 32) and latents.shape == (1, 4, 8, 8)
    assert np.allclose(array[0], tensor[0].permute(1, 2, 0).numpy())
    assert np.abs(np.asarray(pil[0]).astype(float) - array[0] * 255).max() <= 0.5 + 1e-4
    assert torch.equal(pipe.postprocess_images(latents, "pt"), tensor)


def test_callback_can_change_latents_and_interrupt(pipe):
    def zero_last_latents(pipeline, step, timestep, tensors):
        if step == pipeline.num_timesteps - 1:
            tensors["latents"] = torch.zeros_like(tensors["latents"])
        return tensors

    latents = pipe.text_to_image("a cat", num_inference_steps=STEPS, output_type="latent",
                                 callback_on_step_end=zero_last_latents).images
    assert torch.count_nonzero(latents) == 0

    unet_calls, steps_seen = [], []
    pipe.unet.register_forward_pre_hook(lambda module, args: unet_calls.append(1))

    def interrupt_after_two(pipeline, step, timestep, tensors):
        steps_seen.append(step)
        pipeline._interrupt = step == 1
        return tensors

    pipe.text_to_image("a cat", num_inference_steps=5, output_type="latent", callback_on_step_end=interrupt_after_two,
                       callback_on_step_end_tensor_inputs=["latents", "prompt_embeds", "negative_prompt_embeds"])
    assert steps_seen == [0, 1] and len(unet_calls) == 2


def test_progress_bar_follows_its_config(pipe):
    stream = io.StringIO()
    pipe.set_progress_bar_config(file=stream, disable=False, ncols=80)
    pipe.text_to_image("a cat", num_inference_steps=STEPS, output_type="latent")
    assert f"{STEPS}/{STEPS}" in stream.getvalue()
    pipe.set_progress_bar_config(file=stream, disable=True)
    before = stream.getvalue()
    pipe.text_to_image("a cat", num_inference_steps=STEPS, output_type="latent")
    assert stream.getvalue() == before


def test_model_cpu_offload_hooks_every_component_and_changes_no_output(pipe):
    """diffusers' offloading follows `model_cpu_offload_seq` (run here with the CPU as the execution device)."""
    def outputs():
        image = pipe.text_to_image("a cat", num_inference_steps=STEPS, generator=torch.Generator().manual_seed(0),
                                   output_type="np").images
        document = pipe("draw", sequence_bias={(pipe.model.config.dream_start_token_id,): 50.0}, max_images=1,
                        max_new_tokens=4, num_inference_steps=STEPS, generator=torch.Generator().manual_seed(0))
        return image, document.text, np.asarray(document.images[0])

    plain = outputs()
    pipe.enable_model_cpu_offload(device="cpu")
    assert all(hasattr(getattr(pipe, name), "_hf_hook") for name in pipe.model_cpu_offload_seq.split("->"))
    offloaded = outputs()
    assert np.array_equal(offloaded[0], plain[0]) and offloaded[1] == plain[1]
    assert np.array_equal(offloaded[2], plain[2])


@pytest.mark.parametrize("scheduler_class", [DDIMScheduler, EulerDiscreteScheduler])
def test_any_diffusers_scheduler_draws(pipe, scheduler_class):
    pipe.scheduler = scheduler_class.from_config(pipe.scheduler.config)
    images = pipe.text_to_image("a cat", num_inference_steps=STEPS, output_type="np").images
    assert images.shape == (1, 32, 32, 3) and np.isfinite(images).all()


@pytest.mark.parametrize(
    "arguments, message",
    [
        ({"num_inference_steps": 0}, "num_inference_steps must be a whole number >= 1"),
        ({"guidance_scale": -0.5}, "guidance_scale must be a finite number >= 0"),
        ({"height": 30}, "height must be a positive multiple of the VAE scale factor 4"),
        ({"width": 33}, "width must be a positive multiple"),
        ({"prompt": "word " * 600}, "model reads at most 512 positions"),
        ({"num_images_per_prompt": 0}, "num_images_per_prompt"),
        ({"output_type": "jpeg"}, "output_type must be one of"),
        ({"callback_on_step_end_tensor_inputs": ["noise"]}, "callback_on_step_end_tensor_inputs"),
        ({"latents": torch.zeros(1, 4, 4, 4)}, "latents must have shape"),
        ({"generator": [torch.Generator()] * 3}, "3 generators"),
        ({"negative_prompt": ["a", "b"]}, "2 negative prompts for 1 prompts"),
        ({"prompt": None}, "exactly one of prompt or prompt_embeds"),
    ],
)
def test_bad_input_is_reported_clearly(pipe, arguments, message):
    with pytest.raises(ValueError, match=message):
        pipe.text_to_image(**{"prompt": "a cat", "num_inference_steps": 1, **arguments})


def test_components_of_the_wrong_kind_are_refused(pipe):
    components = dict(pipe.components)
    with pytest.raises(TypeError, match="scheduler must be a SchedulerMixin, got str"):
        DreamLLMPipeline(**{**components, "scheduler": "ddpm"})
    with pytest.raises(TypeError, match="unet must be a UNet2DConditionModel, got AutoencoderKL"):
        DreamLLMPipeline(**{**components, "unet": pipe.vae})
