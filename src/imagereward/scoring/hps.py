"""``HPSv2`` / ``HPSv2.1``: OpenCLIP ViT-H-14 fine-tuned on Human Preference Dataset v2 (Wu et al., 2023)."""

from __future__ import annotations

from .clip_score import CLIPScore


class HPSv2Score(CLIPScore):
    """The cosine of the normalised image and text features, as the ``hpsv2`` package scores.

    The weights are an OpenCLIP state dict (our CLIP names already); prompts go
    through OpenCLIP's tokenizer and images through HPSv2's resize-longer-side-and-pad
    chain (see ``docs/preference-models.md``). Scores are cosines (about 0.2-0.3
    for the released models); ``score_tensors`` is differentiable.
    """
