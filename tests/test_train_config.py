"""Training options: paper defaults, config files, command-line flags, the subcommand."""

from __future__ import annotations

import dataclasses
import argparse
import json
import math

import pytest

from imagereward.options import add_arguments
from imagereward.train.cli import config_from_args, register
from imagereward.train.config import TrainConfig, load_config
from imagereward.train.trainer import lr_factor


def test_defaults_are_the_paper_recipe():
    config = TrainConfig()
    assert (config.lr, config.adam_betas, config.adam_eps, config.weight_decay) == (1e-5, (0.9, 0.999), 1e-8, 0.0)
    assert (config.lr_schedule, config.warmup_steps, config.pairs_per_step, config.epochs) == ("cosine", 0, 64, 10)
    assert (config.freeze_rate, config.validations_per_epoch, config.seed) == (0.7, 4, 1234)
    assert (config.precision, config.gradient_checkpointing, config.init) == ("fp32", False, "blip")


def test_file_then_flags(tmp_path):
    toml = tmp_path / "train.toml"
    toml.write_text('train_data = "t.json"\ninit = "scratch"\nlr = 3e-5\nadam_betas = [0.8, 0.99]\n')
    parser = argparse.ArgumentParser()
    register(parser.add_subparsers(dest="command"))
    args = parser.parse_args(["train", "--config", str(toml), "--lr", "2e-4", "--no-plot", "--batch-size", "8"])
    assert args.func.__name__ == "run"
    config = config_from_args(args)
    assert (config.train_data, config.lr, config.adam_betas, config.plot, config.batch_size) == (
        "t.json", 2e-4, (0.8, 0.99), False, 8)
    assert config.epochs == 10  # untouched options keep their defaults

    json_file = tmp_path / "train.json"
    json_file.write_text(json.dumps({"train_data": "t.json", "init": "scratch", "adam-eps": 1e-6}))
    assert load_config(str(json_file)).adam_eps == 1e-6


def test_flags_cover_every_option():
    parser = argparse.ArgumentParser()
    add_arguments(parser, TrainConfig)
    args = parser.parse_args(["--adam-betas", "0.5", "0.6", "--gradient-checkpointing", "--train-data", "x.json",
                              "--init", "scratch", "--precision", "bf16", "--freeze-rate", "0.5"])
    config = config_from_args(args)
    assert config.adam_betas == (0.5, 0.6) and config.gradient_checkpointing and config.freeze_rate == 0.5


def test_errors_name_the_option(tmp_path):
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"train_data": "t.json", "learning_rate": 1.0}))
    with pytest.raises(ValueError, match="bad.json: unknown training option 'learning_rate'"):
        load_config(str(bad))
    with pytest.raises(ValueError, match="freeze_rate = 1.5 must be in"):
        load_config(overrides={"train_data": "t.json", "init": "scratch", "freeze_rate": 1.5})
    with pytest.raises(ValueError, match="init_checkpoint = '' is required for init 'blip'.*model_large.pth"):
        load_config(overrides={"train_data": "t.json"})
    with pytest.raises(ValueError, match="pairs_per_step 64 is not a multiple of batch_size 3 x 2"):
        TrainConfig(batch_size=3).accumulation(2)
    assert TrainConfig(batch_size=4).accumulation(4) == 4


def test_learning_rate_schedule():
    factors = [lr_factor(s, 0, 100, "cosine") for s in range(101)]
    assert factors[0] == 1.0 and math.isclose(factors[50], 0.5) and factors[100] == 0.0
    assert all(a >= b for a, b in zip(factors, factors[1:]))
    assert [lr_factor(s, 3, 10, "constant") for s in (0, 2, 3, 9)] == [0.25, 0.75, 1.0, 1.0]


def test_importing_the_training_package_loads_no_torch():
    import subprocess
    import sys

    code = ("import sys, imagereward, imagereward.train; from imagereward.train import TrainConfig; "
            "assert 'torch' not in sys.modules, 'torch imported'")
    subprocess.run([sys.executable, "-c", code], check=True)


def test_data_loader_workers_default_to_the_cpus_this_process_may_use():
    import os

    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    assert TrainConfig().loader_workers() == min(4, cpus)
    assert dataclasses.replace(TrainConfig(), num_workers=0).loader_workers() == 0
