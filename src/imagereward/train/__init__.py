"""Training ImageReward models on ranked generations (needs ``pip install imagereward[train]``).

>>> from imagereward.train import TrainConfig, train
>>> train(TrainConfig(train_data="train.json", init_checkpoint="model_large.pth"))

Names are imported lazily: ``import imagereward.train`` loads no torch code.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from ..lazy import lazy_exports

_LAZY = {
    "TrainConfig": "imagereward.train.config",
    "load_config": "imagereward.train.config",
    "train": "imagereward.train.trainer",
    "TrainResult": "imagereward.train.trainer",
    "PreferenceGroup": "imagereward.train.sources",
    "read_groups": "imagereward.train.sources",
    "read_hub_dataset": "imagereward.train.sources",
    "make_pairs": "imagereward.train.data",
    "PairDataset": "imagereward.train.data",
    "apply_freeze": "imagereward.train.freeze",
}

__all__ = sorted(_LAZY)

if TYPE_CHECKING:  # pragma: no cover
    from .config import TrainConfig, load_config
    from .data import PairDataset, make_pairs
    from .freeze import apply_freeze
    from .sources import PreferenceGroup, read_groups, read_hub_dataset
    from .trainer import TrainResult, train


__getattr__, __dir__ = lazy_exports(__name__, _LAZY)
