"""``HPSv2`` / ``HPSv2.1``: OpenCLIP ViT-H-14 fine-tuned on Human Preference Dataset v2 (Wu et al., 2023)."""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch

from ..config import CLIPConfig, openclip_vit_h_14
from ..models.clip import infer_clip_config
from .clip_score import CLIPScore
from .network import ScorerParts

if TYPE_CHECKING:  # pragma: no cover
    from ..factory import BuildRequest


class HPSv2Score(CLIPScore):
    """The cosine of the normalised image and text features, as the ``hpsv2`` package scores.

    The weights are an OpenCLIP state dict (our CLIP names already); prompts go
    through OpenCLIP's tokenizer and images through HPSv2's resize-longer-side-and-pad
    chain (see ``docs/preference-models.md``). Scores are cosines (about 0.2-0.3
    for the released models).
    """


def build(request: "BuildRequest") -> ScorerParts:
    """Registry builder: ``{"state_dict": ...}`` as hpsv2 reads it; sizes from the weights
    with OpenCLIP ViT-H-14's head widths (80 image, 64 text) and GELU, unless a config is given."""
    if request.saved:
        return request.build_saved(HPSv2Score)
    path = request.files["weights"]
    state = request.read_weights(key="state_dict")
    config = request.config_of(CLIPConfig)
    if config is None:
        reference = openclip_vit_h_14()
        config = infer_clip_config(
            state, path, vision_head_width=reference.vision_head_width,
            text_head_width=reference.text_head_width, act=reference.act,
        )
    with torch.device("meta"):
        network = HPSv2Score(config)
    request.load_into(network.clip_model, state)
    return request.parts(network, config.context_length, config.image_size)
