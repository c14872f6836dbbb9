"""The scoring API: scorers that turn (prompt, image) pairs into rewards."""

from .base import RankResult, RewardScorer, Scorer
from .image_reward import ImageReward

__all__ = ["ImageReward", "RankResult", "RewardScorer", "Scorer"]
