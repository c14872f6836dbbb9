"""The diffusers pieces ReFL needs: loading a pipeline, text conditioning for SD 1.x/2.x and SDXL."""

from __future__ import annotations

import os
import warnings
from dataclasses import dataclass
from typing import Any, Dict, List, Optional, Sequence

import torch

from ..errors import CheckpointError
from ..options import require


def require_refl(module: str, purpose: str) -> Any:
    """Import an optional ReFL dependency or say how to install it (``imagereward[refl]``)."""
    return require(module, purpose, extra="refl")


@dataclass
class Conditioning:
    """What the UNet is conditioned on: text states, and SDXL's pooled text and size ids."""

    hidden: torch.Tensor
    added: Optional[Dict[str, torch.Tensor]] = None

    def __len__(self) -> int:
        return self.hidden.shape[0]

    def cat(self, other: "Conditioning") -> "Conditioning":
        added = None if self.added is None else {
            k: torch.cat([v, other.added[k]]) for k, v in self.added.items()}  # type: ignore[index]
        return Conditioning(torch.cat([self.hidden, other.hidden]), added)

    def unet_kwargs(self) -> Dict[str, Any]:
        kwargs: Dict[str, Any] = {"encoder_hidden_states": self.hidden}
        if self.added is not None:
            kwargs["added_cond_kwargs"] = self.added
        return kwargs


def is_sdxl(pipe: Any) -> bool:
    return getattr(pipe, "text_encoder_2", None) is not None


class TextConditioner:
    """Prompts -> :class:`Conditioning`, as the pipeline itself encodes them (no grad).

    SD 1.x/2.x: the text encoder's last hidden states of max-length-padded tokens (as
    the original ReFL script). SDXL: both encoders' penultimate states side by side,
    the second encoder's pooled output and the size ids of an uncropped square image.
    """

    def __init__(self, pipe: Any, resolution: int) -> None:
        self.tokenizers = [pipe.tokenizer] + ([pipe.tokenizer_2] if is_sdxl(pipe) else [])
        self.encoders = [pipe.text_encoder] + ([pipe.text_encoder_2] if is_sdxl(pipe) else [])
        self.sdxl = is_sdxl(pipe)
        self.resolution = resolution

    def _ids(self, tokenizer: Any, prompts: Sequence[str], device: torch.device) -> torch.Tensor:
        return tokenizer(list(prompts), padding="max_length", max_length=tokenizer.model_max_length,
                         truncation=True, return_tensors="pt").input_ids.to(device)

    @torch.no_grad()
    def __call__(self, prompts: Sequence[str]) -> Conditioning:
        device = self.encoders[0].device
        if not self.sdxl:
            return Conditioning(self.encoders[0](self._ids(self.tokenizers[0], prompts, device))[0])
        states: List[torch.Tensor] = []
        pooled = None
        for tokenizer, encoder in zip(self.tokenizers, self.encoders):
            out = encoder(self._ids(tokenizer, prompts, device), output_hidden_states=True)
            states.append(out.hidden_states[-2])
            pooled = out[0]
        size = self.resolution
        time_ids = torch.tensor([[size, size, 0, 0, size, size]], device=device, dtype=states[0].dtype)
        added = {"text_embeds": pooled, "time_ids": time_ids.repeat(len(prompts), 1)}
        return Conditioning(torch.cat(states, dim=-1), added)


def load_pipeline(model: str, revision: str = "") -> Any:
    """``DiffusionPipeline.from_pretrained`` without a safety checker (not needed to train).

    A local folder must hold a diffusers pipeline (``model_index.json``); a hub name that
    cannot be had (offline and not cached, or no such repository) is one clear
    :class:`~imagereward.errors.CheckpointError`, without the hub library's warnings.
    """
    diffusers = require_refl("diffusers", "ReFL")
    extra: Dict[str, Any] = {}
    local = os.path.expanduser(model)
    if os.path.exists(local) and not os.path.isfile(os.path.join(local, "model_index.json")):
        raise CheckpointError(f"--model {model}: not a diffusers pipeline folder (it has no model_index.json)")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # the hub library's deprecation notices
            index = diffusers.DiffusionPipeline.load_config(model, revision=revision or None)
    except OSError as error:
        where = "no such folder, and" if not os.path.exists(local) else ""
        raise CheckpointError(
            f"--model {model}: no diffusers pipeline: {where} it cannot be had from the hub "
            f"({str(error).splitlines()[0]})"
        ) from None
    if "safety_checker" in index:
        extra = {"safety_checker": None, "requires_safety_checker": False}
    return diffusers.DiffusionPipeline.from_pretrained(model, revision=revision or None, **extra)


def vae_scale_factor(vae: Any) -> int:
    return 2 ** (len(vae.config.block_out_channels) - 1)


def default_resolution(pipe: Any) -> int:
    """The pipeline's native image side: the UNet's sample size times the VAE's downscale."""
    sample = pipe.unet.config.sample_size
    sample = sample[0] if isinstance(sample, (list, tuple)) else sample
    return int(sample) * vae_scale_factor(pipe.vae)
