"""The diffusion half of DreamLLM's training objective: noise-prediction MSE of a frozen UNet conditioned on the
projected dream-query states."""

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from diffusers import AutoencoderKL, DDPMScheduler, UNet2DConditionModel
from diffusers.schedulers.scheduling_utils import SchedulerMixin
from diffusers.utils.torch_utils import randn_tensor


@dataclass
class DiffusionDraws:
    """
    The random draws of one evaluation of the diffusion loss, for `n` target images.

    Args:
        posterior_noise (`torch.Tensor` of shape `(n, latent_channels, h, w)`):
            N(0, 1) noise of the VAE posterior sample: latents = (mean + std * posterior_noise) * scaling_factor.
        noise (`torch.Tensor` of shape `(n, latent_channels, h, w)`): The diffusion noise added to the latents.
        timesteps (`torch.LongTensor` of shape `(n,)`): Training timesteps, in [0, num_train_timesteps).
    """

    posterior_noise: torch.Tensor
    noise: torch.Tensor
    timesteps: torch.LongTensor


class DiffusionObjective:
    """
    DreamLLM's image-creation loss: encode each target image with the VAE (a posterior sample, times the scaling
    factor), noise it at a random training timestep, and score the UNet's prediction, conditioned on the
    image's dream conditions, against the noise (or the velocity for v-prediction schedulers) by mean squared error.
    The UNet and VAE stay frozen; gradients reach the conditions through the UNet.

    The noise is added by `training_scheduler`, a [`DDPMScheduler`] built from the given scheduler's config (its betas,
    training timesteps and prediction type), as diffusers' training scripts do: a sampling scheduler saved with a
    pipeline (DPM-Solver++, Euler) has its own `add_noise`, which before `set_timesteps` does not follow the training
    noise schedule. `scheduler` stays the given one, the scheduler a trained pipeline is saved with.

    Args:
        unet ([`UNet2DConditionModel`]): The denoiser; its `cross_attention_dim` is the conditions' width.
        vae ([`AutoencoderKL`]): Encodes the target images.
        scheduler ([`SchedulerMixin`]): The pipeline's scheduler; its config gives the noise schedule, the number of
            training timesteps and the prediction type.
    """

    def __init__(self, unet: UNet2DConditionModel, vae: AutoencoderKL, scheduler: SchedulerMixin):
        self.unet = unet.requires_grad_(False).eval()
        self.vae = vae.requires_grad_(False).eval()
        self.scheduler = scheduler
        self.training_scheduler = DDPMScheduler.from_config(scheduler.config)

    def to(self, device: torch.device | str | None = None, dtype: torch.dtype | None = None) -> "DiffusionObjective":
        """Moves the UNet and VAE (in place) to `device`, and casts them to `dtype` when it differs; returns `self`."""
        for component in (self.unet, self.vae):
            component.to(device=device, dtype=None if dtype == component.dtype else dtype)
        return self

    @torch.no_grad()
    def encode(self, pixel_values: torch.Tensor, posterior_noise: torch.Tensor | None = None, generator=None):
        """
        Latents of images in [-1, 1]: a sample of the VAE posterior, times `scaling_factor`.

        Returns:
            The latents and the posterior noise used (drawn from `generator` when not given).
        """
        posterior = self.vae.encode(pixel_values.to(self.vae.device, self.vae.dtype)).latent_dist
        if posterior_noise is None:
            posterior_noise = randn_tensor(posterior.mean.shape, generator, posterior.mean.device, posterior.mean.dtype)
        latents = posterior.mean + posterior.std * posterior_noise.to(posterior.mean)
        return latents * self.vae.config.scaling_factor, posterior_noise

    def draw(self, latents: torch.Tensor, generator: torch.Generator | None = None):
        """Diffusion noise and timesteps for `latents`, from `generator` (or the global generator)."""
        noise = randn_tensor(latents.shape, generator, latents.device, latents.dtype)
        num_train_timesteps = self.training_scheduler.config.num_train_timesteps
        generator_device = generator.device if generator is not None else "cpu"
        timesteps = torch.randint(0, num_train_timesteps, (latents.shape[0],), generator=generator, device=generator_device)
        return noise, timesteps.to(latents.device)

    def target(self, latents: torch.Tensor, noise: torch.Tensor, timesteps: torch.LongTensor) -> torch.Tensor:
        """What the UNet should predict, by the scheduler's `prediction_type`."""
        prediction_type = self.training_scheduler.config.prediction_type
        if prediction_type == "epsilon":
            return noise
        if prediction_type == "v_prediction":
            return self.training_scheduler.get_velocity(latents, noise, timesteps)
        raise ValueError(f"Training supports epsilon and v_prediction schedulers, not prediction_type={prediction_type!r}")

    def __call__(
        self,
        conditions: torch.Tensor,
        pixel_values: torch.Tensor,
        draws: DiffusionDraws | None = None,
        generator: torch.Generator | None = None,
    ) -> torch.Tensor:
        """
        Per-image noise-prediction MSE.

        Args:
            conditions (`torch.Tensor` of shape `(n, num_dream_queries, condition_dim)`):
                The dream conditions of the `n` dream blocks (`outputs.dream_conditions`).
            pixel_values (`torch.Tensor` of shape `(n, 3, resolution, resolution)`):
                The target images in [-1, 1] (`batch["diffusion_pixel_values"]`).
            draws ([`DiffusionDraws`], *optional*): Fixed random draws; drawn from `generator` when not given.
            generator (`torch.Generator`, *optional*): Source of the draws (the global generator by default).

        Returns:
            `torch.Tensor` of shape `(n,)`: the float32 MSE of each image, averaged over its latent elements.
        """
        if conditions.shape[0] != pixel_values.shape[0]:
            raise ValueError(
                f"{conditions.shape[0]} dream block(s) in the batch but {pixel_values.shape[0]} target image(s)"
            )
        latents, _ = self.encode(pixel_values, None if draws is None else draws.posterior_noise, generator)
        if draws is None:
            noise, timesteps = self.draw(latents, generator)
        else:
            noise, timesteps = draws.noise.to(latents), draws.timesteps.to(latents.device)
        noisy_latents = self.training_scheduler.add_noise(latents, noise, timesteps)
        prediction = self.unet(
            noisy_latents.to(self.unet.dtype),
            timesteps,
            encoder_hidden_states=conditions.to(self.unet.device, self.unet.dtype),
            return_dict=False,
        )[0]
        target = self.target(latents, noise, timesteps)
        return F.mse_loss(prediction.float(), target.float(), reduction="none").mean(dim=(1, 2, 3))


__all__ = ["DiffusionDraws", "DiffusionObjective"]
