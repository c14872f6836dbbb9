"""The scoring API: one scorer class over the networks of every registered model."""

from .base import RankResult, Scorer
from .network import RewardNetwork, ScorerParts
from .scorer import RewardScorer

__all__ = ["RankResult", "RewardNetwork", "RewardScorer", "Scorer", "ScorerParts"]
