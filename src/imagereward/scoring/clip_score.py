"""``CLIPScore``: cosine similarity of OpenAI CLIP text and image embeddings."""

from __future__ import annotations

from typing import List, Optional, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from ..config import CLIPConfig
from ..models.clip import CLIPModel
from ..preprocess import ImagePreprocessor
from ..tokenizers.clip_bpe import CLIPTokenizer
from .similarity import CosineScorer


class CLIPScore(nn.Module, CosineScorer):
    """The CLIP baseline: cosine of normalised CLIP ViT-L/14 embeddings (no x100, no clipping).

    ``clip_model`` has the keys of OpenAI's ``ViT-L-14.pt``. Scoring methods return
    Python floats; ``score_tensors`` returns a tensor with gradients.
    """

    def __init__(
        self,
        config: CLIPConfig = CLIPConfig(),
        tokenizer: Optional[CLIPTokenizer] = None,
        preprocess: Optional[ImagePreprocessor] = None,
        batch_size: int = 16,
        num_workers: Optional[int] = None,
    ) -> None:
        super().__init__()
        self.config = config
        self.clip_model = CLIPModel(config)
        self.tokenizer = tokenizer or CLIPTokenizer(context_length=config.context_length)
        self.init_scoring(preprocess, config.image_size, batch_size, num_workers)

    def encoders(self) -> List[nn.Module]:
        return [self.clip_model.visual, self.clip_model.transformer]

    def text_embeddings(self, prompts: Sequence[str]) -> torch.Tensor:
        ids = self.tokenizer(list(prompts)).to(self.device)
        return F.normalize(self.clip_model.encode_text(ids).float(), dim=-1)

    def image_embeddings(self, pixels: torch.Tensor) -> torch.Tensor:
        return F.normalize(self.clip_model.encode_image(pixels).float(), dim=-1)
