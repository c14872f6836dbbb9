"""ReFL: fine-tune diffusion models with the reward (needs ``pip install imagereward[refl]``).

>>> from imagereward.refl import ReFLConfig, train_refl
>>> train_refl(ReFLConfig(model="runwayml/stable-diffusion-v1-5", prompts="refl_data.json",
...                       pretrain_data="laion_subset/"))

Names are imported lazily: ``import imagereward.refl`` imports neither torch nor diffusers.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from ..lazy import lazy_exports

_LAZY = {
    "ReFLConfig": "imagereward.refl.config",
    "load_config": "imagereward.refl.config",
    "train_refl": "imagereward.refl.trainer",
    "ReFLResult": "imagereward.refl.trainer",
    "Reward": "imagereward.refl.reward",
    "read_prompts": "imagereward.refl.data",
    "read_pairs": "imagereward.refl.data",
    "reward_step": "imagereward.refl.algorithm",
    "denoising_loss": "imagereward.refl.algorithm",
    "generate_images": "imagereward.refl.evaluate",
    "heldout_denoising_loss": "imagereward.refl.evaluate",
}

__all__ = sorted(_LAZY)

if TYPE_CHECKING:  # pragma: no cover
    from .algorithm import denoising_loss, reward_step
    from .config import ReFLConfig, load_config
    from .data import read_pairs, read_prompts
    from .evaluate import generate_images, heldout_denoising_loss
    from .reward import Reward
    from .trainer import ReFLResult, train_refl


__getattr__, __dir__ = lazy_exports(__name__, _LAZY)
