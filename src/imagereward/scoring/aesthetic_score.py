"""``AestheticScore``: the LAION aesthetic MLP on normalised CLIP ViT-L/14 image embeddings."""

from __future__ import annotations

from typing import List, Optional, Sequence, Union

import torch
import torch.nn.functional as F
from torch import nn

from ..config import CLIPConfig, HeadConfig
from ..models.clip import CLIPVisionTransformer
from ..models.head import RewardHead
from ..preprocess import ImagePreprocessor
from .base import RewardScorer, TextRows


class AestheticScore(nn.Module, RewardScorer):
    """The Aesthetic baseline: roughly 1-10, higher is prettier; the prompt is ignored.

    ``visual`` is CLIP's image tower (the ``visual.*`` keys of ``ViT-L-14.pt``), ``mlp``
    the activation-free predictor of ``sac+logos+ava1-l14-linearMSE.pth``, run in float32.
    """

    def __init__(
        self,
        config: CLIPConfig = CLIPConfig(),
        head: HeadConfig = HeadConfig(),
        preprocess: Optional[ImagePreprocessor] = None,
        batch_size: int = 16,
        num_workers: Optional[int] = None,
    ) -> None:
        super().__init__()
        self.config = config
        self.visual = CLIPVisionTransformer(config)
        self.mlp = RewardHead(config.embed_dim, head)
        self.init_scoring(preprocess, config.image_size, batch_size, num_workers)

    def encoders(self) -> List[nn.Module]:
        return [self.visual]

    def image_embeddings(self, pixels: torch.Tensor) -> torch.Tensor:
        """Unit-length CLIP image embeddings ``[B, D]`` in float32."""
        return F.normalize(self.visual(pixels).float(), dim=-1)

    def encode_prompts(self, prompts: Sequence[str]) -> TextRows:
        return {}

    def score_rows(self, text: TextRows, pixels: torch.Tensor) -> torch.Tensor:
        features = self.image_embeddings(pixels)
        return self.mlp(features.to(self.mlp.layers[0].weight.dtype)).squeeze(-1).float()

    def image_features(self, pixels: torch.Tensor) -> torch.Tensor:
        return self.score_rows({}, pixels)

    def score_grid(self, text: TextRows, features: torch.Tensor) -> torch.Tensor:
        return features.unsqueeze(0)

    def score_tensors(
        self, pixels: torch.Tensor, prompts: Union[str, Sequence[str], None] = None
    ) -> torch.Tensor:
        """Differentiable scores ``[N]`` for pixels ``[N, 3, H, W]`` in [0, 1] (prompts ignored)."""
        image = self.preprocess.tensor_transform(pixels.to(self.device)).to(self.compute_dtype)
        return self.score_rows({}, image)
