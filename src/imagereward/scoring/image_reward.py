"""``ImageReward``: the reward network with its tokenizer and preprocessing attached."""

from __future__ import annotations

from typing import TYPE_CHECKING, List, Optional, Sequence, Union

import torch
from torch import nn

from ..config import ImageRewardConfig
from ..models.image_reward import ImageRewardNet
from ..preprocess import ImagePreprocessor
from ..tokenizers.bert import BertTokenizer
from .base import RewardScorer, TextRows, expand_prompts

if TYPE_CHECKING:  # pragma: no cover
    from ..factory import BuildRequest

# Text rows per forward pass when many prompts meet a batch of images.
GRID_ROWS = 256


class ImageReward(ImageRewardNet, RewardScorer):
    """Scores how much people will prefer an image for a prompt (higher is better).

    Its ``state_dict`` has the keys of the original ``ImageReward.pt``. Scoring
    methods (``score``, ``inference_rank``, ``rank``, ``score_batch``) return
    normalised rewards as Python floats; ``score_tensors`` and ``score_gard``
    return tensors with gradients.
    """

    FLOAT32_MODULES = ("mlp",)

    def __init__(
        self,
        config: Optional[ImageRewardConfig] = None,
        tokenizer: Optional[BertTokenizer] = None,
        preprocess: Optional[ImagePreprocessor] = None,
        batch_size: int = 16,
        num_workers: Optional[int] = None,
    ) -> None:
        config = config or ImageRewardConfig()
        super().__init__(config)
        self.tokenizer = tokenizer or BertTokenizer(max_length=config.max_text_length)
        self.init_scoring(preprocess, config.vision.image_size, batch_size, num_workers)

    def encoders(self) -> List[nn.Module]:
        return [self.blip.visual_encoder, self.blip.text_encoder]

    @property
    def mean(self) -> float:
        return self.config.reward_mean

    @property
    def std(self) -> float:
        return self.config.reward_std

    def encode_prompts(self, prompts: Sequence[str]) -> TextRows:
        return self.tokenizer(prompts)

    def score_rows(self, text: TextRows, pixels: torch.Tensor) -> torch.Tensor:
        raw = self(text["input_ids"], text["attention_mask"], pixels)
        return self.standardize(raw.float())

    def image_features(self, pixels: torch.Tensor) -> torch.Tensor:
        return self.encode_images(pixels)

    def score_grid(self, text: TextRows, features: torch.Tensor) -> torch.Tensor:
        ids, mask = text["input_ids"], text["attention_mask"]
        step = max(1, GRID_ROWS // features.shape[0])
        raw = torch.cat(
            [
                self.reward_matrix(ids[i : i + step], mask[i : i + step], features)
                for i in range(0, ids.shape[0], step)
            ]
        )
        return self.standardize(raw.float())

    def score_tensors(
        self, pixels: torch.Tensor, prompts: Union[str, Sequence[str]]
    ) -> torch.Tensor:
        """Differentiable normalised rewards ``[N]`` for pixels ``[N, 3, H, W]`` in [0, 1].

        Resizing (bicubic, antialiased), centre-cropping and normalising happen on
        tensors, so gradients reach ``pixels``. ``prompts`` is one string for all
        images or one string per image.
        """
        prompts = expand_prompts(prompts, pixels.shape[0])
        tokens = self.tokenizer(prompts)
        device = self.device
        image = self.preprocess.tensor_transform(pixels.to(device)).to(self.compute_dtype)
        raw = self(tokens["input_ids"].to(device), tokens["attention_mask"].to(device), image)
        return self.standardize(raw)

    def score_gard(
        self, prompt_ids: torch.Tensor, prompt_attention_mask: torch.Tensor, image: torch.Tensor
    ) -> torch.Tensor:
        """Original-compatible differentiable score: ``[B, 1]`` normalised rewards.

        ``image`` is already preprocessed (``[B, 3, S, S]``, normalised).
        """
        device = self.device
        raw = self(prompt_ids.to(device), prompt_attention_mask.to(device), image.to(device))
        return self.standardize(raw).unsqueeze(-1)


def build(request: "BuildRequest") -> ImageReward:
    """Registry builder: the network on ``meta``, then the checkpoint loaded strictly.

    The preprocessing takes the registered chain at the model's own input size.
    """
    config = request.config_of(ImageRewardConfig)
    tokenizer = request.tokenizer(config.max_text_length)
    preprocess = request.preprocessor(config.vision.image_size)
    with torch.device("meta"):
        model = ImageReward(config, tokenizer, preprocess, request.batch_size, request.num_workers)
    request.load_into(model, request.read_weights())
    return model
