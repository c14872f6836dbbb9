"""The reward head: a stack of linear layers with dropout and no activations."""

from __future__ import annotations

import torch
from torch import nn

from ..config import HeadConfig

HEAD_INITS = ("lecun", "original")


class RewardHead(nn.Module):
    """``layers`` indices match the original checkpoints: Linear, Dropout, ..., Linear, Linear."""

    def __init__(self, input_dim: int, config: HeadConfig = HeadConfig()) -> None:
        super().__init__()
        if len(config.dropouts) != len(config.hidden_dims) - 1:
            raise ValueError("HeadConfig needs one dropout per hidden layer but the last")
        modules = []
        width = input_dim
        for index, hidden in enumerate(config.hidden_dims):
            modules.append(nn.Linear(width, hidden))
            if index < len(config.dropouts):
                modules.append(nn.Dropout(config.dropouts[index]))
            width = hidden
        modules.append(nn.Linear(width, 1))
        self.layers = nn.Sequential(*modules)

    def reset_parameters(self, init: str = "lecun") -> None:
        """Fresh weights and zero biases.

        ``"lecun"`` (default): each layer N(0, 1/fan_in), which keeps the variance of the
        features through the five linear layers, so the reward starts on the scale of the
        features and the pairwise loss has gradients to follow. ``"original"``: the
        original training code's N(0, 1/(input_dim+1)) std for every layer; with no
        activations between them the reward starts around 1e-6 or smaller and training
        can sit at loss ln 2 for a long time.
        """
        if init not in HEAD_INITS:
            raise ValueError(f"unknown head initialisation {init!r}; choose from {HEAD_INITS}")
        input_dim = self.layers[0].in_features
        for module in self.layers:
            if isinstance(module, nn.Linear):
                if init == "lecun":
                    std = module.in_features ** -0.5
                else:
                    std = 1.0 / (input_dim + 1)
                nn.init.normal_(module.weight, mean=0.0, std=std)
                nn.init.zeros_(module.bias)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return self.layers(features)
