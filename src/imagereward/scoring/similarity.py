"""Scores that are the (scaled) cosine of L2-normalised text and image embeddings.

CLIP, BLIP and HPSv2 score with the plain cosine; PickScore multiplies it by its
learnt temperature (:meth:`CosineScorer.similarity_scale`).
"""

from __future__ import annotations

from typing import Optional, Sequence, Union

import torch

from .base import RewardScorer, TextRows, expand_prompts


class CosineScorer(RewardScorer):
    """Mixin: subclasses give normalised float32 embeddings of prompts and of pixels."""

    def text_embeddings(self, prompts: Sequence[str]) -> torch.Tensor:
        """Unit-length embeddings ``[N, D]`` (float32, on the model's device)."""
        raise NotImplementedError

    def image_embeddings(self, pixels: torch.Tensor) -> torch.Tensor:
        """Unit-length embeddings ``[B, D]`` (float32) of normalised pixels ``[B, 3, S, S]``."""
        raise NotImplementedError

    def similarity_scale(self) -> Optional[torch.Tensor]:
        """A float32 factor applied to every cosine, or None for the plain cosine."""
        return None

    def _scaled(self, cosines: torch.Tensor) -> torch.Tensor:
        scale = self.similarity_scale()
        return cosines if scale is None else scale * cosines

    def encode_prompts(self, prompts: Sequence[str]) -> TextRows:
        size = max(1, int(self.batch_size))
        chunks = [self.text_embeddings(prompts[i : i + size]) for i in range(0, len(prompts), size)]
        return {"text_embeds": torch.cat(chunks)}

    def score_rows(self, text: TextRows, pixels: torch.Tensor) -> torch.Tensor:
        return self._scaled((text["text_embeds"] * self.image_embeddings(pixels)).sum(dim=-1))

    def image_features(self, pixels: torch.Tensor) -> torch.Tensor:
        return self.image_embeddings(pixels)

    def score_grid(self, text: TextRows, features: torch.Tensor) -> torch.Tensor:
        return self._scaled(text["text_embeds"] @ features.t())

    def score_tensors(
        self, pixels: torch.Tensor, prompts: Union[str, Sequence[str]]
    ) -> torch.Tensor:
        """Differentiable scores ``[N]`` for pixels ``[N, 3, H, W]`` in [0, 1].

        ``prompts`` is one string for all images or one string per image.
        """
        prompts = expand_prompts(prompts, pixels.shape[0])
        image = self.preprocess.tensor_transform(pixels.to(self.device)).to(self.compute_dtype)
        return self._scaled((self.text_embeddings(prompts) * self.image_embeddings(image)).sum(dim=-1))
