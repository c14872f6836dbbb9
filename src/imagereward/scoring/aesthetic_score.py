"""``AestheticScore``: the LAION aesthetic MLP on normalised CLIP ViT-L/14 image embeddings."""

from __future__ import annotations

from typing import TYPE_CHECKING, List, Optional, Sequence, Union

import torch
import torch.nn.functional as F
from torch import nn

from ..checkpoints import read_clip_checkpoint, select_prefix
from ..config import CLIPConfig, HeadConfig
from ..models.clip import CLIPVisionTransformer, infer_clip_config
from ..models.head import RewardHead
from ..preprocess import ImagePreprocessor
from .base import RewardScorer, TextRows

if TYPE_CHECKING:  # pragma: no cover
    from ..factory import BuildRequest


class AestheticScore(nn.Module, RewardScorer):
    """The Aesthetic baseline: roughly 1-10, higher is prettier; the prompt is ignored.

    ``visual`` is CLIP's image tower (the ``visual.*`` keys of ``ViT-L-14.pt``), ``mlp``
    the activation-free predictor of ``sac+logos+ava1-l14-linearMSE.pth``, run in float32.
    """

    FLOAT32_MODULES = ("mlp",)

    def __init__(
        self,
        config: Optional[CLIPConfig] = None,
        head: Optional[HeadConfig] = None,
        preprocess: Optional[ImagePreprocessor] = None,
        batch_size: int = 16,
        num_workers: Optional[int] = None,
    ) -> None:
        super().__init__()
        config = config or CLIPConfig()
        self.config = config
        self.visual = CLIPVisionTransformer(config)
        self.mlp = RewardHead(config.embed_dim, head or HeadConfig())
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


def build(request: "BuildRequest") -> AestheticScore:
    """Registry builder: CLIP's image tower (role ``"clip"``) and the MLP (role ``"weights"``)."""
    clip_path = request.files["clip"]
    clip_state = read_clip_checkpoint(clip_path)
    config = request.config_of(CLIPConfig) or infer_clip_config(clip_state, clip_path)
    preprocess = request.preprocessor(config.image_size)
    with torch.device("meta"):
        model = AestheticScore(
            config, preprocess=preprocess, batch_size=request.batch_size, num_workers=request.num_workers
        )
    request.load_into(model.visual, select_prefix(clip_state, "visual."), role="clip")
    request.load_into(model.mlp, request.read_weights())
    return model
