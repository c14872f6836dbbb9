"""Networks whose score is the (scaled) cosine of L2-normalised text and image embeddings.

CLIP, BLIP and HPSv2 score with the plain cosine; PickScore multiplies it by its
learnt temperature (:meth:`CosineNetwork.similarity_scale`).
"""

from __future__ import annotations

from typing import Any, Optional

import torch

from .network import RewardNetwork, TextRows


class CosineNetwork(RewardNetwork):
    """Subclasses give normalised float32 embeddings of tokens and of pixels."""

    def text_embeddings(self, tokens: Any) -> torch.Tensor:
        """Unit-length embeddings ``[N, D]`` (float32) of tokenised prompts."""
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

    def encode_text(self, tokens: Any) -> TextRows:
        return {"text_embeds": self.text_embeddings(tokens)}

    def score_rows(self, text: TextRows, pixels: torch.Tensor) -> torch.Tensor:
        return self._scaled((text["text_embeds"] * self.image_embeddings(pixels)).sum(dim=-1))

    def image_features(self, pixels: torch.Tensor) -> torch.Tensor:
        return self.image_embeddings(pixels)

    def score_grid(self, text: TextRows, features: torch.Tensor) -> torch.Tensor:
        return self._scaled(text["text_embeds"] @ features.t())
