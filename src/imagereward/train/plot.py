"""``training_curves.png``: loss and accuracy of training steps and validations."""

from __future__ import annotations

from typing import Any, Dict, List, Sequence

from ..options import require


def _smooth(values: Sequence[float], window: int) -> List[float]:
    """Trailing moving average."""
    out, total = [], 0.0
    for index, value in enumerate(values):
        total += value
        if index >= window:
            total -= values[index - window]
        out.append(total / min(index + 1, window))
    return out


def plot_training_curves(records: Sequence[Dict[str, Any]], path: str) -> None:
    """Two panels over epochs: loss and accuracy, per step (smoothed) and per validation."""
    require("matplotlib", "plotting the training curves")
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    train = [r for r in records if r.get("type") == "train"]
    valid = [r for r in records if r.get("type") == "valid"]
    window = max(1, len(train) // 50)
    figure = Figure(figsize=(10, 4), tight_layout=True)
    FigureCanvasAgg(figure)
    for axis, key in zip(figure.subplots(1, 2), ("loss", "accuracy")):
        if train:
            epochs = [r["epoch"] for r in train]
            values = [r[key] for r in train]
            axis.plot(epochs, values, color="tab:blue", alpha=0.25, linewidth=0.8)
            axis.plot(epochs, _smooth(values, window), color="tab:blue",
                      label=f"train (mean of {window} steps)")
        if valid:
            axis.plot([r["epoch"] for r in valid], [r[key] for r in valid], "o-",
                      color="tab:orange", label="validation")
        axis.set_xlabel("epoch")
        axis.set_ylabel(key)
        axis.grid(alpha=0.3)
        axis.legend()
    figure.suptitle("ImageReward training")
    figure.savefig(path, dpi=100)
