"""The ImageReward network: BLIP encoders, the reward head and the normalisation."""

from __future__ import annotations

from typing import List, Optional

import torch
from torch import nn

from ..config import ImageRewardConfig
from .blip import BLIPBackbone
from .head import RewardHead


class ImageRewardNet(nn.Module):
    """Pure tensor model. ``forward`` returns raw rewards ``[B]``; see :meth:`standardize`.

    Parameter names are those of the original ``ImageReward.pt`` (``blip.*``, ``mlp.*``).
    """

    def __init__(self, config: ImageRewardConfig) -> None:
        super().__init__()
        self.config = config
        self.blip = BLIPBackbone(config.vision, config.text)
        self.mlp = RewardHead(config.text.hidden_size, config.head)

    def encode_images(self, pixels: torch.Tensor) -> torch.Tensor:
        """Normalised pixels ``[B, 3, S, S]`` -> image tokens ``[B, N, width]``."""
        return self.blip.visual_encoder(pixels)

    def reward_from_tokens(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor, image_tokens: torch.Tensor
    ) -> torch.Tensor:
        """Raw rewards ``[B]`` from tokenised prompts and image tokens.

        Rows are aligned, or there are ``P`` prompt rows per image, image-major.
        """
        features = self.blip.multimodal_cls(input_ids, attention_mask, image_tokens)
        head_dtype = self.mlp.layers[0].weight.dtype
        return self.mlp(features.to(head_dtype)).squeeze(-1)

    def reward_matrix(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor, image_tokens: torch.Tensor
    ) -> torch.Tensor:
        """Raw rewards ``[P, I]`` of every prompt (rows of ``input_ids``) with every image.

        Each layer projects an image's keys and values once for all ``P`` prompts.
        """
        images, prompts = image_tokens.shape[0], input_ids.shape[0]
        raw = self.reward_from_tokens(
            input_ids.repeat(images, 1), attention_mask.repeat(images, 1), image_tokens
        )
        return raw.view(images, prompts).t()

    def forward(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor, pixels: torch.Tensor
    ) -> torch.Tensor:
        return self.reward_from_tokens(input_ids, attention_mask, self.encode_images(pixels))

    # -- training hooks ---------------------------------------------------------------
    def set_gradient_checkpointing(self, enabled: bool) -> None:
        """Recompute the encoders' activations in the backward pass (training only)."""
        self.blip.visual_encoder.gradient_checkpointing = enabled
        self.blip.text_encoder.encoder.gradient_checkpointing = enabled

    def frozen_parameters(
        self, text_layers: Optional[int], vision_blocks: Optional[int], backbone: bool = False
    ) -> List[nn.Parameter]:
        """Parameters to keep fixed while training: BLIP's projections always; the text
        embeddings and first ``text_layers`` layers, and the ViT stem and first
        ``vision_blocks`` blocks (``None``: none of that tower); or, with ``backbone``,
        all of BLIP. The reward head is never among them.
        """
        blip = self.blip
        if backbone:
            return list(blip.parameters())
        frozen = [p for m in (blip.vision_proj, blip.text_proj) if m is not None for p in m.parameters()]
        if text_layers is not None:
            frozen += blip.text_encoder.leading_parameters(text_layers)
        if vision_blocks is not None:
            frozen += blip.visual_encoder.leading_parameters(vision_blocks)
        return frozen

    def standardize(self, raw: torch.Tensor) -> torch.Tensor:
        """Raw rewards on the released model's scale: mean 0, std 1 on its test set."""
        return (raw - self.config.reward_mean) / self.config.reward_std
