"""The Aesthetic baseline's network (LAION's MLP on CLIP ViT-L/14 image embeddings) and its builder."""

from __future__ import annotations

from typing import TYPE_CHECKING, List, Optional

import torch
import torch.nn.functional as F
from torch import nn

from ..checkpoints import read_clip_checkpoint, select_prefix
from ..config import CLIPConfig, HeadConfig
from ..models.clip import CLIPVisionTransformer, infer_clip_config
from ..models.head import RewardHead
from .network import RewardNetwork, ScorerParts, TextRows

if TYPE_CHECKING:  # pragma: no cover
    from ..factory import BuildRequest


class AestheticScore(RewardNetwork):
    """Roughly 1-10, higher is prettier; the prompt is ignored.

    ``visual`` is CLIP's image tower (the ``visual.*`` keys of ``ViT-L-14.pt``), ``mlp``
    the activation-free predictor of ``sac+logos+ava1-l14-linearMSE.pth``, run in float32.
    """

    FLOAT32_MODULES = ("mlp",)

    def __init__(self, config: CLIPConfig, head: Optional[HeadConfig] = None) -> None:
        super().__init__()
        self.config = config
        self.visual = CLIPVisionTransformer(config)
        self.mlp = RewardHead(config.embed_dim, head or HeadConfig())

    def encoders(self) -> List[nn.Module]:
        return [self.visual]

    def image_embeddings(self, pixels: torch.Tensor) -> torch.Tensor:
        """Unit-length CLIP image embeddings ``[B, D]`` in float32."""
        return F.normalize(self.visual(pixels).float(), dim=-1)

    def encode_text(self, tokens: object) -> TextRows:
        return {}

    def score_rows(self, text: TextRows, pixels: torch.Tensor) -> torch.Tensor:
        features = self.image_embeddings(pixels)
        return self.mlp(features.to(self.mlp.layers[0].weight.dtype)).squeeze(-1).float()

    def image_features(self, pixels: torch.Tensor) -> torch.Tensor:
        return self.score_rows({}, pixels)

    def score_grid(self, text: TextRows, features: torch.Tensor) -> torch.Tensor:
        return features.unsqueeze(0)


def build(request: "BuildRequest") -> ScorerParts:
    """Registry builder: CLIP's image tower (role ``"clip"``) and the MLP (role ``"weights"``)."""
    if request.saved:
        return request.build_saved(AestheticScore)
    clip_path = request.files["clip"]
    clip_state = read_clip_checkpoint(clip_path)
    config = request.config_of(CLIPConfig) or infer_clip_config(clip_state, clip_path)
    with torch.device("meta"):
        network = AestheticScore(config)
    request.load_into(network.visual, select_prefix(clip_state, "visual."), role="clip")
    request.load_into(network.mlp, request.read_weights())
    return request.parts(network, None, config.image_size)
