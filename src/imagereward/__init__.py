"""imagereward: how much will people prefer this image for this prompt?

>>> import imagereward
>>> model = imagereward.load("ImageReward-v1.0")
>>> ranking, rewards = model.inference_rank("a cat", ["a.png", "b.png"])

Attributes are imported lazily, so ``import imagereward`` is fast and pulls in
neither torch nor any training or diffusion library until they are used.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from .lazy import lazy_exports

__version__ = "0.1.0"

_LAZY = {
    "load": "imagereward.factory",
    "load_score": "imagereward.factory",
    "convert_checkpoint": "imagereward.factory",
    "save_pretrained": "imagereward.saving",
    "available_models": "imagereward.registry",
    "available_scores": "imagereward.registry",
    "register": "imagereward.registry",
    "ScorerEntry": "imagereward.registry",
    "WeightsFile": "imagereward.registry",
    "Scorer": "imagereward.scoring.base",
    "RewardScorer": "imagereward.scoring.scorer",
    "ScorerParts": "imagereward.scoring.network",
    "RewardNetwork": "imagereward.scoring.network",
    "ModelSpec": "imagereward.spec",
    "ImageLimits": "imagereward.items",
    "score_items": "imagereward.items",
    "ImageReward": "imagereward.scoring.image_reward",
    "RankResult": "imagereward.scoring.base",
    "ImageRewardConfig": "imagereward.config",
    "CheckpointError": "imagereward.errors",
    "DataError": "imagereward.errors",
    "DeviceError": "imagereward.errors",
    "ExtraMissingError": "imagereward.errors",
    "DownloadError": "imagereward.errors",
    "ImageLoadError": "imagereward.errors",
    "ImageNotFoundError": "imagereward.errors",
    "ImageRewardError": "imagereward.errors",
    "ImageTypeError": "imagereward.errors",
    "InputError": "imagereward.errors",
    "ModelError": "imagereward.errors",
    "PromptError": "imagereward.errors",
    "TokenizerFileError": "imagereward.errors",
    "UnknownModelError": "imagereward.errors",
    "CLIPScore": "imagereward.scoring.clip_score",
    "BLIPScore": "imagereward.scoring.blip_score",
    "AestheticScore": "imagereward.scoring.aesthetic_score",
}

__all__ = sorted(_LAZY) + ["__version__"]

if TYPE_CHECKING:  # pragma: no cover
    from .config import ImageRewardConfig
    from .errors import (
        CheckpointError,
        DataError,
        DeviceError,
        ExtraMissingError,
        DownloadError,
        ImageLoadError,
        ImageNotFoundError,
        ImageRewardError,
        ImageTypeError,
        InputError,
        ModelError,
        PromptError,
        TokenizerFileError,
        UnknownModelError,
    )
    from .factory import convert_checkpoint, load, load_score
    from .items import ImageLimits, score_items
    from .registry import ScorerEntry, WeightsFile, available_models, available_scores, register
    from .saving import save_pretrained
    from .scoring.base import RankResult, Scorer
    from .scoring.image_reward import ImageReward
    from .scoring.network import RewardNetwork, ScorerParts
    from .scoring.scorer import RewardScorer
    from .spec import ModelSpec


__getattr__, __dir__ = lazy_exports(__name__, _LAZY, ("__version__",))
