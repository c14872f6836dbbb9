"""The freeze rate: which parts of BLIP stay fixed while the reward model trains.

For a rate ``r`` in (0, 1]: the text embeddings and the first ``floor(r * layers)`` text
layers, and the ViT's patch embedding, class token, position embedding and first
``floor(r * depth)`` blocks are frozen. ``r = 0`` freezes nothing. Everything else (the
later layers and blocks, the ViT's final norm, the reward head) trains. BLIP's
contrastive projections, when present, never train. For ImageReward's 12 text layers
and 24 ViT blocks, ``r = 0.7`` freezes text layers 0-7 and ViT blocks 0-15.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from ..models.image_reward import ImageRewardNet


@dataclass(frozen=True)
class FreezeSummary:
    text_layers: int
    vision_blocks: int
    trainable: int
    total: int

    def describe(self) -> str:
        return (
            f"frozen: {self.text_layers} text layer(s), {self.vision_blocks} ViT block(s); "
            f"trainable parameters: {self.trainable:,} of {self.total:,}"
        )


def frozen_count(rate: float, layers: int) -> int:
    """``floor(rate * layers)``, robust to float error (0.7 * 10 is 7, not 6)."""
    return min(layers, math.floor(rate * layers + 1e-9))


def apply_freeze(model: ImageRewardNet, rate: float, backbone: bool = False) -> FreezeSummary:
    """Set ``requires_grad`` of every parameter of ``model`` by the freeze rate."""
    text_layers = len(model.blip.text_encoder.encoder.layer)
    blocks = len(model.blip.visual_encoder.blocks)
    frozen_text = text_layers if backbone else frozen_count(rate, text_layers)
    frozen_blocks = blocks if backbone else frozen_count(rate, blocks)
    for param in model.parameters():
        param.requires_grad_(True)
    towers = (frozen_text, frozen_blocks) if rate > 0 else (None, None)
    for param in model.frozen_parameters(*towers, backbone=backbone):
        param.requires_grad_(False)
    return FreezeSummary(
        text_layers=frozen_text,
        vision_blocks=frozen_blocks,
        trainable=sum(p.numel() for p in model.parameters() if p.requires_grad),
        total=sum(p.numel() for p in model.parameters()),
    )
