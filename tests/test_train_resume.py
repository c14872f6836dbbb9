"""A run that crashes, resumes and stops again ends with the weights of an uninterrupted run."""

from __future__ import annotations

import dataclasses
import json

import pytest
import torch
from safetensors.torch import load_file

from helpers import tiny_config
from test_train_synthetic import write_rankings
from imagereward.train.config import TrainConfig
from imagereward.train.logs import read_log
from imagereward.train.state import load_checkpoint
from imagereward.train.trainer import train

TOLERANCE = 1e-6


class Crash(RuntimeError):
    pass


@pytest.fixture(autouse=True)
def _one_thread():
    torch.set_num_threads(1)


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("resume-data")
    model = dataclasses.replace(tiny_config(), max_text_length=8)  # dropout and drop-path on: resuming must restore the random streams
    (root / "model.json").write_text(json.dumps(model.to_dict()))
    return {"train_data": str(write_rankings(root, "train", 16, seed=3)),  # 80 pairs: 10 steps / epoch
            "valid_data": str(write_rankings(root, "valid", 4, seed=4)),
            "model_config": str(root / "model.json")}


def config(data, output_dir, **overrides) -> TrainConfig:
    return TrainConfig(**data, output_dir=str(output_dir), init="scratch", freeze_rate=0.5, lr=1e-3,
                       pairs_per_step=8, batch_size=4, epochs=2, validations_per_epoch=2,
                       checkpoint_every=4, augment=True, num_workers=0, plot=False, **overrides)


def weights(output_dir, name="last"):
    return load_file(str(output_dir / name / "model.safetensors"))


def max_difference(a, b) -> float:
    assert a.keys() == b.keys()
    return max((a[k].double() - b[k].double()).abs().max().item() for k in a)


def crash_at(step):
    def on_record(record):
        if record["type"] == "train" and record["step"] == step:
            raise Crash(f"killed at step {record['step']}")
    return on_record


def test_crash_resume_stop_resume_matches_an_uninterrupted_run(data, tmp_path):
    reference = train(config(data, tmp_path / "a"))
    assert reference.finished and reference.steps == 20

    with pytest.raises(Crash):
        train(config(data, tmp_path / "b"), on_record=crash_at(11))  # last checkpoint: step 8
    saved = load_checkpoint(str(tmp_path / "b" / "checkpoint.pt"))  # weights_only=True
    assert saved["step"] == 8
    with pytest.raises(FileExistsError, match="pass --resume"):
        train(config(data, tmp_path / "b"))

    stopped = train(config(data, tmp_path / "b", resume=True, stop_after_steps=13))
    assert not stopped.finished and stopped.steps == 13
    assert load_checkpoint(str(tmp_path / "b" / "checkpoint.pt"))["step"] == 13
    resumed = train(config(data, tmp_path / "b", resume=True))
    assert resumed.finished and resumed.steps == 20

    difference = max_difference(weights(tmp_path / "a"), weights(tmp_path / "b"))
    print(f"resume: max weight difference {difference:.3g}")
    assert difference <= TOLERANCE
    assert max_difference(weights(tmp_path / "a", "best"), weights(tmp_path / "b", "best")) <= TOLERANCE
    assert (resumed.best_step, resumed.reward_mean) == (reference.best_step, pytest.approx(reference.reward_mean))

    # The log of the resumed run has each step once, with the uninterrupted run's losses.
    log_a, log_b = read_log(str(tmp_path / "a" / "train_log.jsonl")), read_log(str(tmp_path / "b" / "train_log.jsonl"))
    strip = lambda log: [(r["type"], r["step"], round(r["loss"], 6)) for r in log if "loss" in r]  # noqa: E731
    assert strip(log_b) == strip(log_a)


def test_resume_refuses_changed_options(data, tmp_path):
    with pytest.raises(Crash):
        train(config(data, tmp_path), on_record=crash_at(5))
    with pytest.raises(ValueError, match="other values of lr"):
        train(config(data, tmp_path, resume=True).updated({"lr": 5e-4}))
