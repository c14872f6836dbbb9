"""A reward server for RL trainers on Ray Serve (the ``imagereward[serve]`` extra).

    serve run imagereward.runners.serve:build_app model=ImageReward-v1.0
    imagereward serve --model ImageReward-v1.0 --replicas 2
    imagereward serve --models ImageReward-v1.0,PickScore,HPSv2.1   # one server, three models

Attributes are imported lazily, so importing the package needs neither Ray nor
FastAPI; the wire format the client shares with the server is :mod:`imagereward.wire`.
"""

from __future__ import annotations

from ...lazy import lazy_exports

_LAZY = {
    "build_app": "imagereward.runners.serve.app",
    "RewardServer": "imagereward.runners.serve.app",
    "ModelReplica": "imagereward.runners.serve.model",
    "ModelSettings": "imagereward.runners.serve.settings",
    "ServeSettings": "imagereward.runners.serve.settings",
}

__all__ = sorted(_LAZY)


__getattr__, __dir__ = lazy_exports(__name__, _LAZY)
