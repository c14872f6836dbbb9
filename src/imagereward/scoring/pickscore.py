"""``PickScore``: CLIP ViT-H-14 fine-tuned on Pick-a-Pic preferences (Kirstain et al., 2023)."""

from __future__ import annotations

import torch

from .clip_score import CLIPScore


class PickScore(CLIPScore):
    """``logit_scale.exp() * cos(text, image)``, as PickScore's authors compute it.

    The weights are a Hugging Face ``CLIPModel`` translated to our CLIP names;
    prompts go through Hugging Face's fast CLIP tokenizer rules and images through
    ``CLIPImageProcessor``'s (see ``docs/preference-models.md``). Scores are about
    100 times a cosine; ``score_tensors`` is differentiable.
    """

    def similarity_scale(self) -> torch.Tensor:
        return self.clip_model.logit_scale.float().exp()
