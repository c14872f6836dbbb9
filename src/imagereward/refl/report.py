"""Validation artefacts: a PNG grid of the images and a plot of mean reward and losses over steps."""

from __future__ import annotations

import math
from typing import Any, Dict, Sequence

import numpy as np
import torch
from PIL import Image

from ..options import require


def save_grid(pixels: torch.Tensor, path: str, columns: int = 4) -> None:
    """Images ``[N, 3, H, W]`` in [0, 1] side by side, ``columns`` per row."""
    count, _, height, width = pixels.shape
    columns = max(1, min(columns, count))
    rows = math.ceil(count / columns)
    grid = np.zeros((rows * height, columns * width, 3), dtype=np.uint8)
    images = (pixels.clamp(0, 1) * 255).round().to(torch.uint8).permute(0, 2, 3, 1).cpu().numpy()
    for index, image in enumerate(images):
        row, column = divmod(index, columns)
        grid[row * height:(row + 1) * height, column * width:(column + 1) * width] = image
    Image.fromarray(grid).save(path)


def plot_progress(records: Sequence[Dict[str, Any]], path: str) -> None:
    """Mean validation reward, and the training losses, over optimizer steps."""
    require("matplotlib", "plotting the validation reward")
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    train = [r for r in records if r.get("type") == "train"]
    valid = [r for r in records if r.get("type") == "valid"]
    figure = Figure(figsize=(10, 4), tight_layout=True)
    FigureCanvasAgg(figure)
    reward_axis, loss_axis = figure.subplots(1, 2)
    if valid:
        reward_axis.plot([r["step"] for r in valid], [r["reward_mean"] for r in valid], "o-",
                         color="tab:orange", label="validation prompts")
    if train:
        reward_axis.plot([r["step"] for r in train], [r["reward_mean"] for r in train],
                         color="tab:blue", alpha=0.4, label="training images (x̂0)")
        loss_axis.plot([r["step"] for r in train], [r["reward_loss"] for r in train], label="reward loss")
        pretrain = [r for r in train if r.get("pretrain_loss") is not None]
        if pretrain:
            twin = loss_axis.twinx()
            twin.plot([r["step"] for r in pretrain], [r["pretrain_loss"] for r in pretrain],
                      color="tab:green", label="pretraining loss")
            twin.set_ylabel("pretraining loss")
            twin.legend(loc="upper right")
    reward_axis.set(xlabel="step", ylabel="mean reward", title="reward")
    loss_axis.set(xlabel="step", ylabel="reward loss", title="losses")
    for axis in (reward_axis, loss_axis):
        axis.grid(alpha=0.3)
        axis.legend(loc="upper left")
    figure.savefig(path, dpi=100)
