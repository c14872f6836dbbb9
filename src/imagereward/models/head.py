"""The reward head: a stack of linear layers with dropout and no activations."""

from __future__ import annotations

import torch
from torch import nn

from ..config import HeadConfig


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

    def reset_parameters(self) -> None:
        """The original training initialisation: weights N(0, 1/(input_dim+1)), zero biases."""
        input_dim = self.layers[0].in_features
        for module in self.layers:
            if isinstance(module, nn.Linear):
                nn.init.normal_(module.weight, mean=0.0, std=1.0 / (input_dim + 1))
                nn.init.zeros_(module.bias)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return self.layers(features)
