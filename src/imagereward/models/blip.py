"""BLIP's two encoders (and, optionally, its contrastive projections)."""

from __future__ import annotations

from typing import Optional

import torch
from torch import nn

from ..config import TextConfig, VisionConfig
from .med import BertModel
from .vit import VisionTransformer

PROJECTION_DIM = 256


class BLIPBackbone(nn.Module):
    """``visual_encoder`` + ``text_encoder``; ``vision_proj`` / ``text_proj`` when asked for."""

    def __init__(
        self, vision: VisionConfig, text: TextConfig, with_projections: bool = False
    ) -> None:
        super().__init__()
        if text.encoder_width != vision.width:
            raise ValueError(
                f"text encoder_width {text.encoder_width} must equal vision width {vision.width}"
            )
        self.visual_encoder = VisionTransformer(vision)
        self.text_encoder = BertModel(text)
        self.vision_proj: Optional[nn.Linear] = None
        self.text_proj: Optional[nn.Linear] = None
        if with_projections:
            self.vision_proj = nn.Linear(vision.width, PROJECTION_DIM)
            self.text_proj = nn.Linear(text.hidden_size, PROJECTION_DIM)

    def multimodal_cls(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor, image_tokens: torch.Tensor
    ) -> torch.Tensor:
        """The ``[CLS]`` state of the text encoder cross-attending to ``image_tokens``."""
        return self.text_encoder(input_ids, attention_mask, image_tokens, cls_only=True)
