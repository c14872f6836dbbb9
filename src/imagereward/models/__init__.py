"""Neural network modules, one file per model family."""

from .blip import BLIPBackbone
from .head import RewardHead
from .image_reward import ImageRewardNet
from .med import BertModel
from .vit import VisionTransformer

__all__ = ["BLIPBackbone", "BertModel", "ImageRewardNet", "RewardHead", "VisionTransformer"]
