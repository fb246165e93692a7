"""DreamLLMTrainer on the tiny pipeline: the two-part loss and its logs, stage presets, gradient accumulation,
checkpoint resumption, bf16 with activation checkpointing, and the saved pipeline."""

import math

import pytest
import torch
from folders import folder_files
from diffusers import DDPMScheduler, DPMSolverMultistepScheduler, EulerDiscreteScheduler
from transformers import TrainerCallback

from dreamllm import DreamLLMPipeline
from dreamllm.testing import tiny_pipeline
from dreamllm.training import (
    DiffusionObjective,
    DreamLLMDataCollator,
    JsonlDocumentDataset,
    apply_stage,
    build_trainer,
    diffusion_resolution,
    dreamllm_training_arguments,
    prepare_model_for_training,
)

pytestmark = pytest.mark.usefixtures("single_thread")


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    from dreamllm import toy_world

    root = tmp_path_factory.mktemp("toy")
    return JsonlDocumentDataset(toy_world.write_dataset(root, "document", 8, seed=0), tiny_pipeline().processor)


def make_trainer(output_dir, dataset, stage=2, random_flip=True, condition_dropout=0.0, **arguments):
    defaults = {"max_steps": 2, "per_device_train_batch_size": 2, "logging_steps": 1, "save_strategy": "no",
                "disable_tqdm": True, "learning_rate": 1e-3}
    args = dreamllm_training_arguments(output_dir, stage=stage, **{**defaults, **arguments})
    return build_trainer(
        tiny_pipeline(0), dataset, args, stage=stage, random_flip=random_flip, condition_dropout=condition_dropout
    )


def trainable_names(model):
    return {name for name, parameter in model.named_parameters() if parameter.requires_grad}


def test_stage_presets_choose_what_trains():
    model = tiny_pipeline().model
    apply_stage(model, 1)
    stage_one = trainable_names(model)
    assert stage_one and all(name.startswith(("model.vision_projector", "model.dream_")) for name in stage_one)
    for stage in (2, 3):
        apply_stage(model, stage)
        names = trainable_names(model)
        assert stage_one < names and "lm_head.weight" in names
        assert any(name.startswith("model.language_model.") for name in names)
        assert not any(name.startswith("model.vision_tower.") for name in names)
    with pytest.raises(ValueError, match="LoRA applies to stages 2 and 3"):
        prepare_model_for_training(model, 1, lora=True)
    with pytest.raises(ValueError, match="stage must be one of"):
        apply_stage(model, 4)


def test_loss_is_the_weighted_sum_of_both_parts_and_both_are_logged(tmp_path, dataset):
    trainer = make_trainer(tmp_path, dataset)
    model = trainer.model.train()
    batch = trainer.data_collator([dataset[0], dataset[1]])
    torch.manual_seed(0)
    loss = trainer.compute_loss(model, batch)
    torch.manual_seed(0)
    outputs = model(**{key: value for key, value in batch.items() if key != "diffusion_pixel_values"})
    diffusion = trainer.diffusion_objective(outputs.dream_conditions, batch["diffusion_pixel_values"]).mean()
    torch.testing.assert_close(loss, outputs.loss + 10 * diffusion)
    trainer.log({"loss": loss.item()})
    logged = trainer.state.log_history[-1]
    assert logged["lm_loss"] == pytest.approx(outputs.loss.item(), rel=1e-5)
    assert logged["diffusion_loss"] == pytest.approx(diffusion.item(), rel=1e-5)


def test_condition_dropout_runs_the_unconditional_pass_inside_the_forward(tmp_path, dataset):
    batch_rows, conditions_seen = [], []

    def trainer_with(dropout):
        trainer = make_trainer(tmp_path, dataset, condition_dropout=dropout)
        model, objective = trainer.model.train(), trainer.diffusion_objective
        forward = model.forward
        model.forward = lambda **inputs: batch_rows.append(inputs["input_ids"].shape[0]) or forward(**inputs)
        trainer.diffusion_objective = lambda conditions, pixels: conditions_seen.append(conditions) or objective(conditions, pixels)
        return trainer, model

    trainer, model = trainer_with(1.0)
    batch = trainer.data_collator([dataset[0], dataset[1]])
    trainer.compute_loss(model, batch).backward()
    num_blocks = batch["diffusion_pixel_values"].shape[0]
    assert batch_rows == [3]  # the two documents and the unconditional sequence, in one pass of the model
    with torch.no_grad():
        unconditional = model.get_unconditional_dream_conditions(num_blocks)
    torch.testing.assert_close(conditions_seen[0], unconditional, rtol=1e-5, atol=1e-6)
    assert model.model.dream_queries.weight.grad.abs().sum() > 0
    assert model.model.language_model.layers[0].self_attn.q_proj.weight.grad.abs().sum() > 0

    trainer, model = trainer_with(0.0)
    batch_rows.clear(), conditions_seen.clear()
    outputs = model(**{key: value for key, value in batch.items() if key != "diffusion_pixel_values"})
    batch_rows.clear()
    trainer.compute_loss(model, batch)
    assert batch_rows == [2]
    torch.testing.assert_close(conditions_seen[0], outputs.dream_conditions)
    with pytest.raises(ValueError, match="condition_dropout must be in"):
        make_trainer(tmp_path, dataset, condition_dropout=1.5)


def fixed_draws(objective: DiffusionObjective, monkeypatch):
    """Makes the diffusion draws a function of each image alone, so that batching does not change them."""
    encode = objective.encode

    def encode_without_noise(pixel_values, posterior_noise=None, generator=None):
        latents, _ = encode(pixel_values, torch.zeros(pixel_values.shape[0], 4, 8, 8))
        return latents, torch.zeros_like(latents)

    def draw(latents, generator=None):
        return latents.cos(), (latents.flatten(1).abs().sum(1) * 1000).long() % 1000

    monkeypatch.setattr(objective, "encode", encode_without_noise)
    monkeypatch.setattr(objective, "draw", draw)


def test_gradient_accumulation_equals_the_larger_batch(tmp_path, dataset, monkeypatch):
    trainer = make_trainer(tmp_path, dataset)
    fixed_draws(trainer.diffusion_objective, monkeypatch)
    model = trainer.model.train()
    collator = DreamLLMDataCollator(
        trainer.processing_class, diffusion_resolution(trainer.diffusion_objective.unet, trainer.diffusion_objective.vae),
        random_flip=False,
    )

    def gradients(micro_batches):
        model.zero_grad()
        samples, _ = trainer.get_batch_samples(iter(micro_batches), len(micro_batches), trainer.args.device)
        for batch in samples:
            trainer.compute_loss(model, batch).backward()
        return {name: p.grad.clone() for name, p in model.named_parameters() if p.grad is not None}

    documents = [dataset[0], dataset[3]]
    accumulated = gradients([collator([documents[0]]), collator([documents[1]])])
    together = gradients([collator(documents)])
    assert accumulated.keys() == together.keys()
    for name in together:
        torch.testing.assert_close(accumulated[name], together[name], rtol=1e-4, atol=1e-6, msg=name)


class StopAt(TrainerCallback):
    def __init__(self, step):
        self.step = step

    def on_step_end(self, args, state, control, **kwargs):
        control.should_training_stop = state.global_step >= self.step


def test_resuming_from_a_checkpoint_continues_the_same_run(tmp_path, dataset):
    arguments = {"max_steps": 4, "save_strategy": "steps", "save_steps": 2}
    uninterrupted = make_trainer(tmp_path / "full", dataset, random_flip=False, **arguments)
    uninterrupted.train()
    interrupted = make_trainer(tmp_path / "resumed", dataset, random_flip=False, **arguments)
    interrupted.add_callback(StopAt(2))
    interrupted.train()
    resumed = make_trainer(tmp_path / "resumed", dataset, random_flip=False, **arguments)
    resumed.train(resume_from_checkpoint=str(tmp_path / "resumed" / "checkpoint-2"))
    assert resumed.state.global_step == 4
    expected = uninterrupted.model.state_dict()
    for name, value in resumed.model.state_dict().items():
        torch.testing.assert_close(value, expected[name], rtol=1e-5, atol=1e-6, msg=name)


def test_bf16_with_activation_checkpointing_and_accumulation_trains(tmp_path, dataset):
    trainer = make_trainer(
        tmp_path, dataset, bf16=True, activation_checkpointing=True, gradient_accumulation_steps=2,
        per_device_train_batch_size=1,
    )
    before = {name: p.detach().clone() for name, p in trainer.model.named_parameters() if p.requires_grad}
    trainer.train()
    assert trainer.model.is_activation_checkpointing
    logs = [entry for entry in trainer.state.log_history if "lm_loss" in entry]
    assert len(logs) == 2 and all(math.isfinite(entry["lm_loss"]) for entry in logs)
    assert any(math.isfinite(entry.get("diffusion_loss", math.nan)) for entry in logs)
    changed = [name for name, p in trainer.model.named_parameters() if p.requires_grad and not torch.equal(p, before[name])]
    assert any(name.startswith("model.language_model.") for name in changed)
    assert "model.dream_queries.weight" in changed


def test_saved_training_output_loads_as_a_pipeline(tmp_path, dataset):
    trainer = make_trainer(tmp_path, dataset, stage=1)
    trainer.train()
    trainer.save_pretrained(tmp_path / "final")
    pipeline = DreamLLMPipeline.from_pretrained(tmp_path / "final")
    trained = trainer.model.state_dict()
    for name, value in pipeline.model.state_dict().items():
        torch.testing.assert_close(value, trained[name], rtol=0, atol=0, msg=name)
    reference = tiny_pipeline(0)
    torch.testing.assert_close(pipeline.unet.state_dict(), reference.unet.state_dict(), rtol=0, atol=0)
    assert not torch.equal(pipeline.model.model.dream_projector.weight, reference.model.model.dream_projector.weight)
    torch.testing.assert_close(
        pipeline.model.model.language_model.embed_tokens.weight,
        reference.model.model.language_model.embed_tokens.weight, rtol=0, atol=0,
    )


def test_saving_keeps_the_checkpoints_and_a_failed_save_keeps_the_previous_model(tmp_path, dataset, monkeypatch):
    output = tmp_path / "run"
    trainer = make_trainer(output, dataset, stage=1, save_strategy="steps", save_steps=1)
    trainer.train()
    trainer.save_pretrained()  # into the output folder, beside the Trainer's checkpoints
    assert sorted(path.name for path in output.glob("checkpoint-*")) == ["checkpoint-1", "checkpoint-2"]
    saved = folder_files(output)

    def disk_full(*args, **kwargs):
        raise OSError("disk full")

    with torch.no_grad():
        trainer.model.model.dream_projector.weight.add_(1.0)
    with monkeypatch.context() as patch:
        patch.setattr(trainer.diffusion_objective.vae, "save_pretrained", disk_full)
        with pytest.raises(OSError, match="disk full"):
            trainer.save_pretrained()
    assert folder_files(output) == saved
    assert sorted(path.name for path in tmp_path.iterdir()) == ["run"]  # no staging folder left

    trainer.save_pretrained()
    reloaded = DreamLLMPipeline.from_pretrained(output).model.model.dream_projector.weight
    torch.testing.assert_close(reloaded, trainer.model.model.dream_projector.weight, rtol=0, atol=0)


def test_diffusion_objective_follows_the_scheduler_prediction_type():
    pipeline = tiny_pipeline()
    latents, noise, timesteps = torch.randn(2, 4, 8, 8), torch.randn(2, 4, 8, 8), torch.tensor([10, 900])

    def objective_predicting(prediction_type: str) -> DiffusionObjective:
        scheduler = DDPMScheduler.from_config(pipeline.scheduler.config, prediction_type=prediction_type)
        return DiffusionObjective(pipeline.unet, pipeline.vae, scheduler)

    assert objective_predicting("epsilon").target(latents, noise, timesteps) is noise
    torch.testing.assert_close(
        objective_predicting("v_prediction").target(latents, noise, timesteps),
        DDPMScheduler.from_config(pipeline.scheduler.config).get_velocity(latents, noise, timesteps),
    )
    with pytest.raises(ValueError, match="epsilon and v_prediction"):
        objective_predicting("sample").target(latents, noise, timesteps)
    conditions = torch.zeros(1, 4, pipeline.unet.config.cross_attention_dim)
    with pytest.raises(ValueError, match="target image"):
        objective_predicting("epsilon")(conditions, torch.zeros(2, 3, 32, 32))


@pytest.mark.parametrize("sampler", [DPMSolverMultistepScheduler, EulerDiscreteScheduler])
@torch.no_grad()
def test_the_diffusion_loss_follows_the_training_noise_schedule_whatever_the_pipeline_samples_with(sampler):
    """A pipeline saved with a sampling scheduler (the toy model ships DPM-Solver++) trains as with DDPM."""
    pipeline = tiny_pipeline()
    resolution = diffusion_resolution(pipeline.unet, pipeline.vae)
    conditions = torch.randn(3, pipeline.model.config.num_dream_queries, pipeline.unet.config.cross_attention_dim)
    pixels = torch.rand(3, 3, resolution, resolution, generator=torch.Generator().manual_seed(1)) * 2 - 1

    def losses(scheduler):
        objective = DiffusionObjective(pipeline.unet, pipeline.vae, scheduler)
        return objective(conditions, pixels, generator=torch.Generator().manual_seed(0))

    torch.testing.assert_close(losses(sampler.from_config(pipeline.scheduler.config)), losses(pipeline.scheduler))


def test_a_pipeline_trained_from_one_sampling_with_dpm_solver_is_saved_with_it(tmp_path, dataset):
    pipeline = tiny_pipeline(0)
    pipeline.scheduler = DPMSolverMultistepScheduler.from_config(pipeline.scheduler.config, algorithm_type="dpmsolver++")
    args = dreamllm_training_arguments(tmp_path, stage=2, max_steps=1, per_device_train_batch_size=2,
                                       save_strategy="no", disable_tqdm=True)
    trainer = build_trainer(pipeline, dataset, args, stage=2)
    trainer.train()
    trainer.save_pretrained(tmp_path / "final")
    saved = DreamLLMPipeline.from_pretrained(tmp_path / "final").scheduler
    assert isinstance(saved, DPMSolverMultistepScheduler) and saved.config.algorithm_type == "dpmsolver++"
