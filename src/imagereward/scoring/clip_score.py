"""``CLIPScore``: cosine similarity of OpenAI CLIP text and image embeddings."""

from __future__ import annotations

from typing import TYPE_CHECKING, List, Optional, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from ..checkpoints import read_clip_checkpoint
from ..config import CLIPConfig
from ..models.clip import CLIPModel, infer_clip_config
from ..preprocess import ImagePreprocessor
from ..tokenizers.clip_bpe import CLIPTokenizer
from .similarity import CosineScorer

if TYPE_CHECKING:  # pragma: no cover
    from ..factory import BuildRequest


class CLIPScore(nn.Module, CosineScorer):
    """The CLIP baseline: cosine of normalised CLIP ViT-L/14 embeddings (no x100, no clipping).

    ``clip_model`` has the keys of OpenAI's ``ViT-L-14.pt``. Scoring methods return
    Python floats; ``score_tensors`` returns a tensor with gradients.
    """

    def __init__(
        self,
        config: Optional[CLIPConfig] = None,
        tokenizer: Optional[CLIPTokenizer] = None,
        preprocess: Optional[ImagePreprocessor] = None,
        batch_size: int = 16,
        num_workers: Optional[int] = None,
    ) -> None:
        super().__init__()
        config = config or CLIPConfig()
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


def build(request: "BuildRequest") -> CLIPScore:
    """Registry builder: sizes from the weights unless a config is given, strict loading."""
    path = request.files["weights"]
    state = request.filter_keys(read_clip_checkpoint(path))
    config = request.config_of(CLIPConfig) or infer_clip_config(state, path)
    tokenizer = request.tokenizer(config.context_length)
    preprocess = request.preprocessor(config.image_size)
    with torch.device("meta"):
        model = CLIPScore(config, tokenizer, preprocess, request.batch_size, request.num_workers)
    request.load_into(model.clip_model, state)
    return model
