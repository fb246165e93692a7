"""Schedulers: the ones a noise-prediction UNet can use draw; the others are refused by name at assignment and at
construction. The pipeline's properties hold after every call."""

import numpy as np
import pytest
import torch
from drawing import draw_first
from diffusers import (
    DDIMScheduler,
    DDPMWuerstchenScheduler,
    DPMSolverMultistepScheduler,
    EulerAncestralDiscreteScheduler,
    EulerDiscreteScheduler,
    FlowMatchEulerDiscreteScheduler,
    HeunDiscreteScheduler,
    KarrasVeScheduler,
    LCMScheduler,
    PNDMScheduler,
    RePaintScheduler,
    SCMScheduler,
    UniPCMultistepScheduler,
)

from dreamllm import DreamLLMPipeline
from dreamllm.testing import tiny_pipeline

STEPS = 4

pytestmark = pytest.mark.usefixtures("single_thread")


@pytest.fixture(scope="module")
def pipe():
    return tiny_pipeline(seed=0)


@pytest.mark.parametrize(
    "scheduler_class",
    [DDIMScheduler, EulerDiscreteScheduler, EulerAncestralDiscreteScheduler, DPMSolverMultistepScheduler,
     UniPCMultistepScheduler, PNDMScheduler, HeunDiscreteScheduler, LCMScheduler],
)
def test_noise_prediction_schedulers_draw_finite_images(pipe, scheduler_class):
    original = pipe.scheduler
    pipe.scheduler = scheduler_class.from_config(original.config)
    try:
        images = pipe.text_to_image("a cat", num_inference_steps=STEPS, output_type="np",
                                    generator=torch.Generator().manual_seed(0)).images
    finally:
        pipe.scheduler = original
    assert images.shape == (1, 32, 32, 3) and np.isfinite(images).all()


@pytest.mark.parametrize(
    "scheduler, message",
    [
        (FlowMatchEulerDiscreteScheduler(), "FlowMatchEulerDiscreteScheduler cannot drive DreamLLM's UNet: it has no "
                                            "init_noise_sigma, scale_model_input"),
        (SCMScheduler(), "SCMScheduler cannot drive DreamLLM's UNet: it has no scale_model_input"),
        (RePaintScheduler(), "RePaintScheduler cannot drive .*its step needs .*original_image, mask"),
        (KarrasVeScheduler(), "KarrasVeScheduler cannot drive .*its step needs .*sigma_hat"),
        (DDPMWuerstchenScheduler(), "DDPMWuerstchenScheduler cannot drive .*prediction_type is None"),
        (DDIMScheduler(prediction_type="flow"), "DDIMScheduler cannot drive .*prediction_type is 'flow'"),
        ("ddpm", "scheduler must be a SchedulerMixin, got str"),
    ],
)
def test_schedulers_the_unet_cannot_use_are_refused_at_assignment_and_construction(pipe, scheduler, message):
    original = pipe.scheduler
    with pytest.raises(TypeError, match=message):
        pipe.scheduler = scheduler
    assert pipe.scheduler is original
    with pytest.raises(TypeError, match=message):
        DreamLLMPipeline(**{**pipe.components, "scheduler": scheduler})


def test_a_scheduler_set_around_the_check_is_refused_at_call(monkeypatch):
    pipe = tiny_pipeline(seed=0)
    monkeypatch.setitem(pipe.__dict__, "scheduler", FlowMatchEulerDiscreteScheduler())
    for call in (lambda: pipe.text_to_image("a cat", num_inference_steps=1), lambda: pipe("hi", max_new_tokens=1)):
        with pytest.raises(TypeError, match="FlowMatchEulerDiscreteScheduler cannot drive DreamLLM's UNet"):
            call()


def test_properties_are_defined_before_and_after_every_call(pipe):
    fresh = tiny_pipeline(seed=0)
    assert (fresh.num_timesteps, fresh.guidance_scale, fresh.interrupt) == (0, 1.0, False)
    pipe("hi", max_images=0, max_new_tokens=2, guidance_scale=3.0)
    assert (pipe.num_timesteps, pipe.guidance_scale, pipe.do_classifier_free_guidance, pipe.interrupt) == (
        0, 3.0, True, False)
    pipe("hi", num_inference_steps=STEPS, guidance_scale=1.0, **draw_first(pipe, max_images=1, max_new_tokens=3))
    assert (pipe.num_timesteps, pipe.do_classifier_free_guidance) == (STEPS, False)
    pipe.text_to_image("a cat", num_inference_steps=3, output_type="latent")
    assert pipe.num_timesteps == 3
    pipe("hi", max_images=0, max_new_tokens=2)
    assert pipe.num_timesteps == 0  # the latest call drew nothing
