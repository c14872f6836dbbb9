"""ImageReward's network as the engine runs it, and its registry builder."""

from __future__ import annotations

from typing import TYPE_CHECKING, Dict, List

import torch
from torch import nn

from ..config import ImageRewardConfig
from ..models.image_reward import ImageRewardNet
from .network import RewardNetwork, ScorerParts, TextRows

if TYPE_CHECKING:  # pragma: no cover
    from ..factory import BuildRequest

# Text rows per forward pass when many prompts meet a batch of images.
GRID_ROWS = 256


class ImageReward(ImageRewardNet, RewardNetwork):
    """How much people will prefer an image for a prompt: normalised rewards (higher is better).

    Parameter names are those of the original ``ImageReward.pt`` (``blip.*``, ``mlp.*``).
    ``score_gard`` is the original's differentiable entry point.
    """

    FLOAT32_MODULES = ("mlp",)

    def encoders(self) -> List[nn.Module]:
        return [self.blip.visual_encoder, self.blip.text_encoder]

    @property
    def mean(self) -> float:
        return self.config.reward_mean

    @property
    def std(self) -> float:
        return self.config.reward_std

    def encode_text(self, tokens: Dict[str, torch.Tensor]) -> TextRows:
        return {"input_ids": tokens["input_ids"], "attention_mask": tokens["attention_mask"]}

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

    def score_gard(
        self, prompt_ids: torch.Tensor, prompt_attention_mask: torch.Tensor, image: torch.Tensor
    ) -> torch.Tensor:
        """Original-compatible differentiable score: ``[B, 1]`` normalised rewards.

        ``image`` is already preprocessed (``[B, 3, S, S]``, normalised).
        """
        device = self.device
        raw = self(prompt_ids.to(device), prompt_attention_mask.to(device), image.to(device))
        return self.standardize(raw).unsqueeze(-1)


def build(request: "BuildRequest") -> ScorerParts:
    """Registry builder: the network on ``meta``, then the checkpoint (original or saved) strictly."""
    config = request.config_of(ImageRewardConfig)
    with torch.device("meta"):
        network = ImageReward(config)
    request.load_into(network, request.read_weights())
    return request.parts(network, config.max_text_length, config.vision.image_size)
