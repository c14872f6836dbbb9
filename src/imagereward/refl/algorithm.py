"""The ReFL computation, one function per stage, shared by the trainer and the benchmarks.

A ReFL micro-step (the paper's Algorithm 1, as the original script runs it):

1. latents ~ N(0, I) at the pipeline's resolution; the sampler set to ``T`` steps;
2. a stop index ``j`` drawn uniformly from the last ``stop_steps`` of them;
3. steps ``0 .. j-1`` without gradient; step ``j`` with gradient, keeping the
   sampler's predicted clean latents x̂0;
4. x̂0 decoded by the VAE (with gradient), mapped to [0, 1];
5. the reward through the scorer's differentiable preprocessing;
6. loss ``mean(relu(margin - reward)) * grad_scale``.

The pretraining loss is the ordinary noise-prediction MSE on (image, caption) pairs.
"""

from __future__ import annotations

from typing import Any, Optional

import torch
import torch.nn.functional as F

from .pipeline import Conditioning, require_refl


def make_sampler(kind: str, scheduler_config: Any) -> Any:
    """The sampler of generated images, from the pipeline's scheduler configuration.

    Latents are not confined to [-1, 1]: where the configuration (e.g. of an Euler
    scheduler) does not say, x̂0 is not clipped (DDPM's and DDIM's own default clips it).
    """
    diffusers = require_refl("diffusers", "ReFL")
    cls = {"ddpm": diffusers.DDPMScheduler, "ddim": diffusers.DDIMScheduler}[kind]
    extra = {} if "clip_sample" in scheduler_config else {"clip_sample": False}
    return cls.from_config(scheduler_config, **extra)


def make_noise_scheduler(scheduler_config: Any) -> Any:
    """The training (forward-process) scheduler of the pretraining loss."""
    return require_refl("diffusers", "ReFL").DDPMScheduler.from_config(scheduler_config)


def stream_seed(seed: int, batch_number: int, purpose: int) -> int:
    """A seed for one purpose of one micro-batch of the run (independent of resuming).

    ``batch_number`` counts micro-batches over all processes, so ``N`` processes with
    accumulation ``A`` draw what one process with accumulation ``N * A`` draws.
    """
    value = seed
    for part in (batch_number, purpose):
        value = (value * 1_000_003 + part) % (2**62)
    return value


def draw_stop_index(num_steps: int, stop_steps: int, generator: torch.Generator) -> int:
    """Uniform over the last ``stop_steps`` sampler steps (the original: 30..39 of 40)."""
    return int(torch.randint(num_steps - stop_steps, num_steps, (1,), generator=generator))


def initial_latents(batch: int, channels: int, resolution: int, scale: int, generator: torch.Generator,
                    device: torch.device) -> torch.Tensor:
    """N(0, I) latents ``[B, C, R/scale, R/scale]`` drawn on the CPU (the same on every device)."""
    side = resolution // scale
    return torch.randn((batch, channels, side, side), generator=generator).to(device)


def predict_noise(unet: Any, latents: torch.Tensor, timestep: torch.Tensor, cond: Conditioning,
                  uncond: Optional[Conditioning], guidance_scale: float) -> torch.Tensor:
    """The UNet's output, with classifier-free guidance when ``uncond`` is given."""
    if uncond is None or guidance_scale == 1.0:
        return unet(latents, timestep, **cond.unet_kwargs()).sample
    both = uncond.cat(cond)
    out = unet(torch.cat([latents, latents]), timestep, **both.unet_kwargs()).sample
    out_uncond, out_cond = out.chunk(2)
    return out_uncond + guidance_scale * (out_cond - out_uncond)


def sample_until(unet: Any, sampler: Any, latents: torch.Tensor, stop_index: int, cond: Conditioning,
                 uncond: Optional[Conditioning], guidance_scale: float,
                 generator: torch.Generator) -> torch.Tensor:
    """Run sampler steps ``0 .. stop_index - 1`` without gradient; return the latents."""
    with torch.no_grad():
        for timestep in sampler.timesteps[:stop_index]:
            model_input = sampler.scale_model_input(latents, timestep)
            noise = predict_noise(unet, model_input, timestep, cond, uncond, guidance_scale)
            latents = sampler.step(noise, timestep, latents, generator=generator).prev_sample
    return latents


def predicted_x0(unet: Any, sampler: Any, latents: torch.Tensor, stop_index: int, cond: Conditioning,
                 uncond: Optional[Conditioning], guidance_scale: float,
                 generator: torch.Generator) -> torch.Tensor:
    """Step ``stop_index`` with gradient: the sampler's predicted clean latents x̂0."""
    timestep = sampler.timesteps[stop_index]
    model_input = sampler.scale_model_input(latents, timestep)
    noise = predict_noise(unet, model_input, timestep, cond, uncond, guidance_scale)
    return sampler.step(noise, timestep, latents, generator=generator).pred_original_sample


def decode(vae: Any, latents: torch.Tensor) -> torch.Tensor:
    """Latents -> pixels in [0, 1] (with gradient), in the VAE's precision."""
    latents = latents.to(vae.dtype) / vae.config.scaling_factor
    shift = getattr(vae.config, "shift_factor", None)
    if shift:
        latents = latents + shift
    image = vae.decode(latents).sample
    return (image / 2 + 0.5).clamp(0, 1)


def reward_loss(rewards: torch.Tensor, margin: float, grad_scale: float) -> torch.Tensor:
    """``mean(relu(margin - reward)) * grad_scale``."""
    return F.relu(margin - rewards).mean() * grad_scale


def generate(unet: Any, vae: Any, sampler: Any, latents: torch.Tensor, cond: Conditioning,
             uncond: Optional[Conditioning], guidance_scale: float, num_steps: int,
             generator: torch.Generator) -> torch.Tensor:
    """Full sampling without gradient: pixels ``[B, 3, R, R]`` in [0, 1]."""
    sampler.set_timesteps(num_steps, device=latents.device)
    with torch.no_grad():
        latents = sample_until(unet, sampler, latents, num_steps, cond, uncond, guidance_scale, generator)
        return decode(vae, latents).float()


@torch.no_grad()
def encode_images(vae: Any, pixels: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Pixels in [-1, 1] -> scaled latents, sampled from the VAE posterior."""
    posterior = vae.encode(pixels.to(vae.device, vae.dtype)).latent_dist
    noise = torch.randn(posterior.mean.shape, generator=generator).to(posterior.mean)
    latents = posterior.mean + posterior.std * noise
    shift = getattr(vae.config, "shift_factor", None)
    if shift:
        latents = latents - shift
    return latents * vae.config.scaling_factor


def denoising_loss(unet: Any, noise_scheduler: Any, latents: torch.Tensor, cond: Conditioning,
                   generator: torch.Generator) -> torch.Tensor:
    """The pretraining loss: MSE of the UNet's target (noise, or v) at uniform timesteps."""
    batch = latents.shape[0]
    noise = torch.randn(latents.shape, generator=generator).to(latents)
    steps = noise_scheduler.config.num_train_timesteps
    timesteps = torch.randint(0, steps, (batch,), generator=generator).to(latents.device)
    noisy = noise_scheduler.add_noise(latents, noise, timesteps)
    if noise_scheduler.config.prediction_type == "v_prediction":
        target = noise_scheduler.get_velocity(latents, noise, timesteps)
    else:
        target = noise
    prediction = unet(noisy, timesteps, **cond.unet_kwargs()).sample
    return F.mse_loss(prediction.float(), target.float())


def reward_step(unet: Any, vae: Any, sampler: Any, reward: Any, prompts: Any, cond: Conditioning,
                uncond: Optional[Conditioning], latents: torch.Tensor, stop_index: int, *,
                num_steps: int, guidance_scale: float, margin: float, grad_scale: float,
                generator: torch.Generator) -> Any:
    """One ReFL micro-step from given latents and stop index: ``(loss, rewards)``.

    ``generator`` draws the sampler's own noise (DDPM variance); ``reward`` maps
    pixels in [0, 1] and prompts to rewards ``[B]``.
    """
    sampler.set_timesteps(num_steps, device=latents.device)
    latents = sample_until(unet, sampler, latents, stop_index, cond, uncond, guidance_scale, generator)
    x0 = predicted_x0(unet, sampler, latents, stop_index, cond, uncond, guidance_scale, generator)
    rewards = reward(decode(vae, x0), prompts)
    return reward_loss(rewards, margin, grad_scale), rewards
