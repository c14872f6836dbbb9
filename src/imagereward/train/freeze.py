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
from typing import List

from torch import nn

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


def frozen_modules(model: ImageRewardNet, rate: float, backbone: bool = False) -> List[nn.Module]:
    """The modules whose parameters stay fixed (see the module docstring)."""
    blip = model.blip
    if backbone:
        return [blip]
    modules: List[nn.Module] = [m for m in (blip.vision_proj, blip.text_proj) if m is not None]
    if rate > 0:
        text, vision = blip.text_encoder, blip.visual_encoder
        modules.append(text.embeddings)
        modules.extend(text.encoder.layer[: frozen_count(rate, len(text.encoder.layer))])
        modules.append(vision.patch_embed)
        modules.extend(vision.blocks[: frozen_count(rate, len(vision.blocks))])
    return modules


def apply_freeze(model: ImageRewardNet, rate: float, backbone: bool = False) -> FreezeSummary:
    """Set ``requires_grad`` of every parameter of ``model`` by the freeze rate."""
    for param in model.parameters():
        param.requires_grad_(True)
    for module in frozen_modules(model, rate, backbone):
        module.requires_grad_(False)
    vision = model.blip.visual_encoder
    if backbone or rate > 0:
        vision.cls_token.requires_grad_(False)
        vision.pos_embed.requires_grad_(False)
    text_layers = len(model.blip.text_encoder.encoder.layer)
    blocks = len(vision.blocks)
    return FreezeSummary(
        text_layers=text_layers if backbone else frozen_count(rate, text_layers),
        vision_blocks=blocks if backbone else frozen_count(rate, blocks),
        trainable=sum(p.numel() for p in model.parameters() if p.requires_grad),
        total=sum(p.numel() for p in model.parameters()),
    )
