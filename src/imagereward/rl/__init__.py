"""Rewards for RL trainers (DDPO, GRPO-style, AlignProp/ReFL-style): several models, weighted,
in-process or on a reward server. See :mod:`imagereward.rl.rewards` and docs/rl.md.

Attributes are imported lazily: ``import imagereward.rl`` loads no model code.
"""

from __future__ import annotations

from ..lazy import lazy_exports

_LAZY = {
    "MultiReward": "imagereward.rl.rewards",
    "as_items": "imagereward.rl.rewards",
    "RewardStats": "imagereward.reward_stats",
}

__all__ = sorted(_LAZY)

__getattr__, __dir__ = lazy_exports(__name__, _LAZY)
