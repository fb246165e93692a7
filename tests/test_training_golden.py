"""The training losses reproduce the original implementation on the official-tiny fixture's training samples.

The fixture recorded, per sample, the batch its data builder made, the random draws of the diffusion loss (VAE
posterior noise, diffusion noise, timestep) and the losses `[lm_loss, vm_loss, loss]`.
"""

import json

import pytest
import torch
from official_tiny import load_official_tiny_pipeline
from safetensors.torch import load_file

from dreamllm.training import DiffusionDraws, DiffusionObjective, DreamLLMDataCollator, diffusion_resolution

pytestmark = pytest.mark.usefixtures("single_thread")

TOLERANCE = 1e-4
SAMPLES = ("creation", "interleaved", "comprehension")


@pytest.fixture(scope="module")
def pipeline(official_tiny):
    return load_official_tiny_pipeline(official_tiny)


@pytest.fixture(scope="module")
def golden(official_tiny):
    meta = json.loads((official_tiny / "golden" / "meta.json").read_text())["train_loss"]
    return load_file(official_tiny / "golden" / "train_loss.safetensors"), meta


def fixture_record(official_tiny, meta: dict, sample: str) -> dict:
    """The sample as a JSON Lines record of our format: segments in the order the original builder laid them out."""
    inputs = official_tiny / "inputs"
    image = {"image": str(inputs / f"train_image_{sample}.png")}
    texts = meta[sample]["sample"]["text_list"] or [meta[sample]["sample"]["text"]]
    if sample == "interleaved":
        segments = [{"text": texts[0]}, image, {"text": texts[1]}]
    elif sample == "creation":
        segments = [{"text": texts[0]}, image]
    else:
        segments = [image, {"text": texts[0]}]
    return {"segments": segments}


def golden_losses(pipeline, tensors: dict, sample: str, batch: dict) -> tuple[float, float, float]:
    """`(lm, diffusion, weighted total)` of `batch` with the sample's recorded diffusion draws."""
    model = pipeline.model
    outputs = model(
        input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], labels=batch["labels"],
        pixel_values=batch.get("pixel_values"),
    )
    diffusion = 0.0
    if outputs.dream_conditions is not None:
        draws = DiffusionDraws(
            posterior_noise=tensors[f"{sample}.vae_posterior_eps"],
            noise=tensors[f"{sample}.noise"],
            timesteps=tensors[f"{sample}.timesteps"],
        )
        objective = DiffusionObjective(pipeline.unet, pipeline.vae, pipeline.scheduler)
        diffusion = objective(outputs.dream_conditions, batch["diffusion_pixel_values"], draws=draws).mean().item()
    config = model.config
    total = config.loss_weight_lm * outputs.loss.item() + config.loss_weight_diffusion * diffusion
    return outputs.loss.item(), diffusion, total


@pytest.mark.parametrize("sample", SAMPLES)
@torch.no_grad()
def test_losses_of_the_recorded_batches_match(pipeline, golden, sample):
    tensors, _ = golden
    batch = {
        "input_ids": tensors[f"{sample}.input_ids"],
        "attention_mask": tensors[f"{sample}.attention_mask"],
        "labels": tensors[f"{sample}.labels"],
    }
    if f"{sample}.images" in tensors:
        batch["pixel_values"] = tensors[f"{sample}.images"]
    if f"{sample}.images_dm" in tensors:
        batch["diffusion_pixel_values"] = tensors[f"{sample}.images_dm"]
    actual = golden_losses(pipeline, tensors, sample, batch)
    assert actual == pytest.approx(tensors[f"{sample}.losses"].tolist(), abs=TOLERANCE)


@pytest.mark.parametrize("sample", ("interleaved", "comprehension"))
def test_collator_builds_the_recorded_batches(official_tiny, pipeline, golden, sample):
    tensors, meta = golden
    collator = DreamLLMDataCollator(
        pipeline.processor, diffusion_resolution(pipeline.unet, pipeline.vae), random_flip=False
    )
    batch = collator([fixture_record(official_tiny, meta, sample)])
    assert torch.equal(batch["input_ids"], tensors[f"{sample}.input_ids"])
    assert torch.equal(batch["attention_mask"], tensors[f"{sample}.attention_mask"])
    assert torch.equal(batch["labels"], tensors[f"{sample}.labels"])
    torch.testing.assert_close(batch["pixel_values"], tensors[f"{sample}.images"], rtol=0, atol=1e-6)
    if sample == "interleaved":
        assert not any(meta[sample]["images_dm_hflipped"])
        torch.testing.assert_close(batch["diffusion_pixel_values"], tensors[f"{sample}.images_dm"], rtol=0, atol=1e-6)


@torch.no_grad()
def test_creation_pair_of_our_format_gives_the_recorded_diffusion_loss(official_tiny, pipeline, golden):
    # The original's creation pairs end at the dream block and learn no text; ours read the picture back and learn
    # the caption and `<dream_start>`. The dream conditions only see what precedes them, so the diffusion loss is the
    # same.
    tensors, meta = golden
    collator = DreamLLMDataCollator(
        pipeline.processor, diffusion_resolution(pipeline.unet, pipeline.vae), random_flip=False
    )
    batch = collator([fixture_record(official_tiny, meta, "creation")])
    torch.testing.assert_close(batch["diffusion_pixel_values"], tensors["creation.images_dm"], rtol=0, atol=1e-6)
    _, diffusion, _ = golden_losses(pipeline, tensors, "creation", batch)
    assert diffusion == pytest.approx(tensors["creation.losses"][1].item(), abs=TOLERANCE)
