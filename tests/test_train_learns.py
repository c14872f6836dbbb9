"""A tiny model learns the synthetic preference task: validation accuracy from chance to >= 90%."""

from __future__ import annotations

import itertools
import json
import math
import time

import pytest
import torch

from test_train_synthetic import write_model_config, write_rankings
import imagereward
from imagereward.train.config import TrainConfig
from imagereward.train.logs import read_log
from imagereward.train.trainer import train


def test_tiny_model_learns_colour_and_shape_preferences(tmp_path):
    torch.set_num_threads(1)  # faster than two for a model this small
    root = tmp_path / "data"
    config = TrainConfig(
        train_data=str(write_rankings(root, "train", 200, seed=1)),  # 1,000 pairs
        valid_data=str(write_rankings(root, "valid", 50, seed=2)),  # 250 pairs, unseen images
        model_config=str(write_model_config(root / "model.json")),
        init="scratch", freeze_rate=0.0, lr=1e-3, pairs_per_step=16, batch_size=16, epochs=20,
        validations_per_epoch=1, num_workers=0, output_dir=str(tmp_path / "run"),
    )
    started = time.monotonic()
    result = train(config)
    seconds = time.monotonic() - started

    log = read_log(str(tmp_path / "run" / "train_log.jsonl"))
    validations = [r for r in log if r["type"] == "valid"]
    first, best = validations[0], min(validations, key=lambda r: r["loss"])
    print(f"learnability: validation accuracy {first['accuracy']:.3f} -> {best['accuracy']:.3f} "
          f"(best at step {best['step']} of {result.steps}) in {seconds:.0f} s")
    # A fresh head (N(0, 1/fan_in) per layer) gives random rewards of order one: chance-level loss.
    assert first["step"] == 0 and first["loss"] == pytest.approx(math.log(2), abs=0.1)
    assert 0.35 <= first["accuracy"] <= 0.65
    assert best["accuracy"] >= 0.9 and result.best_step == best["step"]
    assert (tmp_path / "run" / "training_curves.png").stat().st_size > 10_000

    # The best model loads through the public loader, scores, and is standardised on the
    # reference (validation) images like ImageReward-v1.0.
    model = imagereward.load(str(tmp_path / "run" / "best"), device="cpu", num_workers=0)
    assert (model.mean, model.std) == (pytest.approx(result.reward_mean), pytest.approx(result.reward_std))
    items = json.loads((root / "valid.json").read_text())
    rewards, hits, pairs = [], 0, 0
    for item in items:
        scores = model.score(item["prompt"], [str(root / p) for p in item["generations"]])
        rewards.extend(scores)
        for i, j in itertools.combinations(range(len(scores)), 2):
            if item["ranking"][i] != item["ranking"][j]:
                better, worse = (i, j) if item["ranking"][i] < item["ranking"][j] else (j, i)
                hits += scores[better] > scores[worse]
                pairs += 1
    assert hits / pairs == pytest.approx(best["accuracy"], abs=1e-6)
    mean = sum(rewards) / len(rewards)
    std = math.sqrt(sum((r - mean) ** 2 for r in rewards) / len(rewards))
    assert mean == pytest.approx(0.0, abs=1e-4) and std == pytest.approx(1.0, abs=1e-4)
