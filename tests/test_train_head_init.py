"""The fresh reward head: the original initialisation stalls at loss ln 2, and training says so;
the default (variance-preserving) one learns at once. Steps to learn: benchmarks/head_init.py."""

from __future__ import annotations

import logging
import math

import pytest
import torch

from test_train_synthetic import write_model_config, write_rankings
from imagereward.train.config import TrainConfig
from imagereward.train.logs import read_log
from imagereward.train.trainer import train


@pytest.fixture(scope="module")
def task(tmp_path_factory):
    root = tmp_path_factory.mktemp("task")
    return dict(
        train_data=str(write_rankings(root, "train", 24, seed=1)),  # 120 pairs: 7 steps an epoch
        valid_data=str(write_rankings(root, "valid", 8, seed=2)),
        model_config=str(write_model_config(root / "model.json")),
        init="scratch", freeze_rate=0.0, lr=1e-3, lr_schedule="constant", pairs_per_step=16, batch_size=16,
        epochs=1, validations_per_epoch=4, num_workers=0, checkpoint_every=0, plot=False,
    )


def run(task, tmp_path, head_init):
    torch.set_num_threads(1)
    train(TrainConfig(**task, head_init=head_init, output_dir=str(tmp_path / head_init)))
    log = read_log(str(tmp_path / head_init / "train_log.jsonl"))
    return [r for r in log if r["type"] == "valid"], [r for r in log if r["type"] == "warning"]


def test_original_head_init_stalls_and_is_reported(task, tmp_path, caplog):
    with caplog.at_level(logging.WARNING, logger="imagereward.train"):
        valid, warnings = run(task, tmp_path, "original")
    assert all(abs(r["loss"] - math.log(2)) < 1e-3 for r in valid[:3])  # sits at ln 2
    assert all(r["reward_std"] < 1e-3 for r in valid[:3])
    assert len(warnings) == 1 and "--head-init original" in warnings[0]["message"]
    assert warnings[0]["step"] == valid[2]["step"]  # after the third flat validation
    assert "--head-init lecun" in caplog.text


def test_default_head_init_learns_without_warning(task, tmp_path):
    valid, warnings = run(task, tmp_path, "lecun")
    assert warnings == []
    assert all(r["reward_std"] > 0.01 for r in valid)  # the reward varies from the start
    assert max(abs(r["loss"] - math.log(2)) for r in valid) > 0.01  # the loss moves off ln 2 at once
