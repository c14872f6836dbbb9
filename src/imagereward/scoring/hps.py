"""``HPSv2`` / ``HPSv2.1``: OpenCLIP ViT-H-14 fine-tuned on Human Preference Dataset v2 (Wu et al., 2023)."""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch

from ..config import CLIPConfig, openclip_vit_h_14
from ..models.clip import infer_clip_config
from .clip_score import CLIPScore

if TYPE_CHECKING:  # pragma: no cover
    from ..factory import BuildRequest


class HPSv2Score(CLIPScore):
    """The cosine of the normalised image and text features, as the ``hpsv2`` package scores.

    The weights are an OpenCLIP state dict (our CLIP names already); prompts go
    through OpenCLIP's tokenizer and images through HPSv2's resize-longer-side-and-pad
    chain (see ``docs/preference-models.md``). Scores are cosines (about 0.2-0.3
    for the released models); ``score_tensors`` is differentiable.
    """


def build(request: "BuildRequest") -> HPSv2Score:
    """Registry builder: ``{"state_dict": ...}`` as hpsv2 reads it; sizes from the weights
    with OpenCLIP ViT-H-14's head widths (80 image, 64 text) and GELU, unless a config is given."""
    path = request.files["weights"]
    state = request.read_weights(key="state_dict")
    config = request.config_of(CLIPConfig)
    if config is None:
        reference = openclip_vit_h_14()
        config = infer_clip_config(
            state, path, vision_head_width=reference.vision_head_width,
            text_head_width=reference.text_head_width, act=reference.act,
        )
    tokenizer = request.tokenizer(config.context_length)
    preprocess = request.preprocessor(config.image_size)
    with torch.device("meta"):
        model = HPSv2Score(config, tokenizer, preprocess, request.batch_size, request.num_workers)
    request.load_into(model.clip_model, state)
    return model
