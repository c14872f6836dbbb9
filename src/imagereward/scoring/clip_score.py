"""The CLIP baseline's network (cosine of OpenAI CLIP text and image embeddings) and its builder."""

from __future__ import annotations

from typing import TYPE_CHECKING, List

import torch
import torch.nn.functional as F
from torch import nn

from ..checkpoints import read_clip_checkpoint
from ..config import CLIPConfig
from ..models.clip import CLIPModel, infer_clip_config
from .network import ScorerParts
from .similarity import CosineNetwork

if TYPE_CHECKING:  # pragma: no cover
    from ..factory import BuildRequest


class CLIPScore(CosineNetwork):
    """Cosine of normalised CLIP embeddings (no x100, no clipping), as the paper's CLIP score.

    ``clip_model`` has the keys of OpenAI's ``ViT-L-14.pt``.
    """

    def __init__(self, config: CLIPConfig) -> None:
        super().__init__()
        self.config = config
        self.clip_model = CLIPModel(config)

    def encoders(self) -> List[nn.Module]:
        return [self.clip_model.visual, self.clip_model.transformer]

    def text_embeddings(self, tokens: torch.Tensor) -> torch.Tensor:
        return F.normalize(self.clip_model.encode_text(tokens).float(), dim=-1)

    def image_embeddings(self, pixels: torch.Tensor) -> torch.Tensor:
        return F.normalize(self.clip_model.encode_image(pixels).float(), dim=-1)


def build(request: "BuildRequest") -> ScorerParts:
    """Registry builder: sizes from the weights unless a config is given, strict loading."""
    if request.saved:
        return request.build_saved(CLIPScore)
    path = request.files["weights"]
    state = read_clip_checkpoint(path)
    config = request.config_of(CLIPConfig) or infer_clip_config(state, path)
    with torch.device("meta"):
        network = CLIPScore(config)
    request.load_into(network.clip_model, state)
    return request.parts(network, config.context_length, config.image_size)
