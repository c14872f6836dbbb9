"""Held-out measures of a pipeline during and after ReFL: mean reward of fixed-seed images,
and the denoising loss on (image, caption) pairs; both deterministic for a given seed."""

from __future__ import annotations

from typing import Any, List, Optional, Sequence, Tuple

import torch

from .algorithm import denoising_loss, encode_images, generate, initial_latents, make_noise_scheduler, make_sampler
from .data import CaptionedImages, batch_of_pairs
from .pipeline import Conditioning, TextConditioner, vae_scale_factor


def generate_images(pipe: Any, prompts: Sequence[str], seed: int, *, resolution: int, num_steps: int = 40,
                    guidance_scale: float = 1.0, sampler: str = "ddpm", batch_size: int = 4,
                    unet: Optional[Any] = None) -> torch.Tensor:
    """Pixels ``[N, 3, R, R]`` in [0, 1] of ``prompts``; image ``i`` is seeded by ``(seed, i)``.

    ``unet`` replaces the pipeline's (e.g. the one being trained).
    """
    unet = unet or pipe.unet
    vae = pipe.vae
    conditioner = TextConditioner(pipe, resolution)
    scheduler = make_sampler(sampler, pipe.scheduler.config)
    device = vae.device
    images: List[torch.Tensor] = []
    for start in range(0, len(prompts), batch_size):
        chunk = list(prompts[start:start + batch_size])
        latents = []
        for index in range(start, start + len(chunk)):
            generator = torch.Generator().manual_seed(seed * 100_003 + index)
            latents.append(initial_latents(1, unet.config.in_channels, resolution, vae_scale_factor(vae),
                                           generator, device))
        cond = conditioner(chunk)
        uncond = conditioner([""] * len(chunk)) if guidance_scale != 1.0 else None
        generator = torch.Generator().manual_seed(seed * 100_003 + 99_991 + start)
        images.append(generate(unet, vae, scheduler, torch.cat(latents), cond, uncond, guidance_scale,
                               num_steps, generator).cpu())
    return torch.cat(images)


@torch.no_grad()
def mean_reward(reward: Any, pixels: torch.Tensor, prompts: Sequence[str],
                batch_size: int = 8) -> Tuple[float, List[float]]:
    """Mean and per-image rewards of generated pixels."""
    values: List[float] = []
    for start in range(0, len(prompts), batch_size):
        chunk = pixels[start:start + batch_size]
        values.extend(reward(chunk, list(prompts[start:start + batch_size])).float().cpu().tolist())
    return sum(values) / len(values), values


@torch.no_grad()
def heldout_denoising_loss(pipe: Any, pairs: CaptionedImages, resolution: int, seed: int,
                           batch_size: int = 4, repeats: int = 4, unet: Optional[Any] = None) -> float:
    """Mean pretraining loss over ``pairs`` (``repeats`` noise draws each, fixed by ``seed``)."""
    unet = unet or pipe.unet
    conditioner = TextConditioner(pipe, resolution)
    noise_scheduler = make_noise_scheduler(pipe.scheduler.config)
    total, count = 0.0, 0
    for repeat in range(repeats):
        for start in range(0, len(pairs), batch_size):
            indices = list(range(start, min(start + batch_size, len(pairs))))
            pixels, captions = batch_of_pairs(pairs, indices, resolution)
            generator = torch.Generator().manual_seed(seed * 1_000_003 + repeat * 10_007 + start)
            latents = encode_images(pipe.vae, pixels, generator).float()
            cond: Conditioning = conditioner(captions)
            total += float(denoising_loss(unet, noise_scheduler, latents, cond, generator)) * len(indices)
            count += len(indices)
    return total / count
