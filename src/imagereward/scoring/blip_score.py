"""``BLIPScore``: cosine similarity of BLIP's projected unimodal text and image features."""

from __future__ import annotations

from typing import TYPE_CHECKING, List, Optional, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from ..config import BLIPScoreConfig
from ..models.blip import BLIPBackbone
from ..preprocess import ImagePreprocessor
from ..tokenizers.bert import BertTokenizer
from .similarity import CosineScorer

if TYPE_CHECKING:  # pragma: no cover
    from ..factory import BuildRequest


class BLIPScore(nn.Module, CosineScorer):
    """The BLIP baseline (BLIP's image-text contrastive similarity, without temperature).

    Text: the BERT encoder in text-only mode, ``[CLS]`` state -> ``text_proj``.
    Image: the ViT's class token -> ``vision_proj``. Both are L2-normalised.
    ``blip`` has the keys of the pretraining checkpoint's ``"model"`` entry.
    """

    def __init__(
        self,
        config: Optional[BLIPScoreConfig] = None,
        tokenizer: Optional[BertTokenizer] = None,
        preprocess: Optional[ImagePreprocessor] = None,
        batch_size: int = 16,
        num_workers: Optional[int] = None,
    ) -> None:
        super().__init__()
        config = config or BLIPScoreConfig()
        self.config = config
        self.blip = BLIPBackbone(config.vision, config.text, with_projections=True)
        self.tokenizer = tokenizer or BertTokenizer(max_length=config.max_text_length)
        self.init_scoring(preprocess, config.vision.image_size, batch_size, num_workers)

    def encoders(self) -> List[nn.Module]:
        return [self.blip.visual_encoder, self.blip.text_encoder]

    def text_embeddings(self, prompts: Sequence[str]) -> torch.Tensor:
        tokens = self.tokenizer(list(prompts))
        device = self.device
        cls = self.blip.text_encoder(
            tokens["input_ids"].to(device), tokens["attention_mask"].to(device), mode="text",
            cls_only=True,
        )
        return F.normalize(self.blip.text_proj(cls).float(), dim=-1)

    def image_embeddings(self, pixels: torch.Tensor) -> torch.Tensor:
        tokens = self.blip.visual_encoder(pixels)
        return F.normalize(self.blip.vision_proj(tokens[:, 0, :]).float(), dim=-1)


def build(request: "BuildRequest") -> BLIPScore:
    """Registry builder: the encoders and projections of BLIP's pretraining checkpoint."""
    config = request.config_of(BLIPScoreConfig)
    tokenizer = request.tokenizer(config.max_text_length)
    preprocess = request.preprocessor(config.vision.image_size)
    with torch.device("meta"):
        model = BLIPScore(config, tokenizer, preprocess, request.batch_size, request.num_workers)
    request.load_into(model.blip, request.read_weights(key="model"))
    return model
