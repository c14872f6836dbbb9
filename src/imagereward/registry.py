"""Pretrained reward models: where their weights live and how they were trained to see.

Each entry carries its network configuration and preprocessing, so loading a
name gives a model that sees images exactly as it did in training.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Dict, List, Optional

from .config import ImageRewardConfig, PreprocessConfig


@dataclass(frozen=True)
class PretrainedReward:
    name: str
    repo_id: str
    filename: str
    description: str
    config: Callable[[], ImageRewardConfig] = ImageRewardConfig
    preprocess: PreprocessConfig = field(default_factory=PreprocessConfig)
    sha256: Optional[str] = None


PRETRAINED_MODELS: Dict[str, PretrainedReward] = {
    "ImageReward-v1.0": PretrainedReward(
        name="ImageReward-v1.0",
        repo_id="THUDM/ImageReward",
        filename="ImageReward.pt",
        description="BLIP ViT-L/16 + BERT-base reward model trained on 137k expert comparisons",
    ),
}


def available_models() -> List[str]:
    """Names accepted by :func:`imagereward.load`."""
    return list(PRETRAINED_MODELS)
