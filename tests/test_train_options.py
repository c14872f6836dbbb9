"""Memory and precision options: gradient checkpointing and bf16 autocast."""

from __future__ import annotations

import dataclasses
import json

import pytest
import torch

from helpers import tiny_config
from test_train_synthetic import write_rankings
from imagereward.train.config import TrainConfig
from imagereward.train.logs import read_log
from imagereward.train.trainer import train


@pytest.fixture(autouse=True)
def _one_thread():
    torch.set_num_threads(1)


def run(tmp_path, name, **overrides):
    root = tmp_path / "data"
    if not (root / "train.json").exists():
        model = dataclasses.replace(tiny_config(), max_text_length=8)
        root.mkdir()
        (root / "model.json").write_text(json.dumps(model.to_dict()))
        write_rankings(root, "train", 8, seed=7)
        write_rankings(root, "valid", 2, seed=8)
    config = TrainConfig(
        train_data=str(root / "train.json"), valid_data=str(root / "valid.json"),
        model_config=str(root / "model.json"), init="scratch", lr=1e-3, pairs_per_step=8,
        batch_size=4, epochs=1, validations_per_epoch=1, num_workers=0, plot=False,
        output_dir=str(tmp_path / name), **overrides,
    )
    result = train(config)
    return result, [r["loss"] for r in read_log(str(tmp_path / name / "train_log.jsonl")) if r["type"] == "train"]


def test_gradient_checkpointing_gives_the_same_steps(tmp_path):
    _, plain = run(tmp_path, "plain")
    _, checkpointed = run(tmp_path, "checkpointed", gradient_checkpointing=True)
    assert len(plain) == 5
    assert checkpointed == pytest.approx(plain, abs=1e-6)  # dropout masks are replayed


def test_bf16_autocast_trains(tmp_path):
    result, losses = run(tmp_path, "bf16", precision="bf16", gradient_checkpointing=True)
    assert result.finished and len(losses) == 5
    assert all(0.0 < loss < 2.0 for loss in losses)
    assert result.reward_std > 0


def test_threads_on_the_cpu_are_the_processes_share(tmp_path, monkeypatch):
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    monkeypatch.delenv("MKL_NUM_THREADS", raising=False)
    torch.set_num_threads(2)
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "8")  # as torchrun says it: 8 processes on this machine
    run(tmp_path, "shared")
    assert torch.get_num_threads() == 1
    run(tmp_path, "given", threads=2)
    assert torch.get_num_threads() == 2
