"""The BLIP baseline's network (cosine of BLIP's projected unimodal features) and its builder."""

from __future__ import annotations

from typing import TYPE_CHECKING, Dict, List

import torch
import torch.nn.functional as F
from torch import nn

from ..config import BLIPScoreConfig
from ..models.blip import BLIPBackbone
from .network import ScorerParts
from .similarity import CosineNetwork

if TYPE_CHECKING:  # pragma: no cover
    from ..factory import BuildRequest


class BLIPScore(CosineNetwork):
    """BLIP's image-text contrastive similarity, without temperature.

    Text: the BERT encoder in text-only mode, ``[CLS]`` state -> ``text_proj``.
    Image: the ViT's class token -> ``vision_proj``. Both are L2-normalised.
    ``blip`` has the keys of the pretraining checkpoint's ``"model"`` entry.
    """

    def __init__(self, config: BLIPScoreConfig) -> None:
        super().__init__()
        self.config = config
        self.blip = BLIPBackbone(config.vision, config.text, with_projections=True)

    def encoders(self) -> List[nn.Module]:
        return [self.blip.visual_encoder, self.blip.text_encoder]

    def text_embeddings(self, tokens: Dict[str, torch.Tensor]) -> torch.Tensor:
        cls = self.blip.text_encoder(
            tokens["input_ids"], tokens["attention_mask"], mode="text", cls_only=True
        )
        return F.normalize(self.blip.text_proj(cls).float(), dim=-1)

    def image_embeddings(self, pixels: torch.Tensor) -> torch.Tensor:
        tokens = self.blip.visual_encoder(pixels, cls_only=True)
        return F.normalize(self.blip.vision_proj(tokens[:, 0, :]).float(), dim=-1)


def build(request: "BuildRequest") -> ScorerParts:
    """Registry builder: the encoders and projections of BLIP's pretraining checkpoint."""
    config = request.config_of(BLIPScoreConfig)
    with torch.device("meta"):
        network = BLIPScore(config)
    if request.saved:
        request.load_into(network, request.read_weights())
    else:
        request.load_into(network.blip, request.read_weights(key="model"))
    return request.parts(network, config.max_text_length, config.vision.image_size)
