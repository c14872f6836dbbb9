"""Two processes under torchrun (gloo) follow the loss curve of one process with the same
effective batch: 8 pairs per step as 2 processes x 4 pairs, or 1 process x 4 pairs x 2."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys

import pytest
import torch
from safetensors.torch import load_file

from test_train_synthetic import write_model_config, write_rankings
from imagereward.train.config import TrainConfig
from imagereward.train.logs import read_log
from imagereward.train.trainer import train

# Same pairs per step and no dropout: the runs differ only in float summation order
# (gradients averaged by all-reduce instead of accumulated).
TOLERANCE = 1e-4


def curve(output_dir):
    return [(r["type"], r["step"], r["loss"], r["accuracy"])
            for r in read_log(os.path.join(output_dir, "train_log.jsonl")) if r["type"] in ("train", "valid")]


def gradient_free(key: str, text_layers: int) -> bool:
    """Parameters the pairwise loss cannot see: it ignores a shift shared by every reward, and
    softmax ignores a shift shared by every key.

    - the head's biases and the last text layer's output LayerNorm bias: the head is linear on
      the [CLS] feature, so each of them shifts every reward by the same amount;
    - attention key biases: they add the same q.b to a query's scores for every key.
    """
    last_norm = f"blip.text_encoder.encoder.layer.{text_layers - 1}.output.LayerNorm.bias"
    return (
        (key.startswith("mlp.") and key.endswith(".bias"))
        or key == last_norm
        or key.endswith(".self.key.bias")
    )


def test_two_processes_match_one(tmp_path, monkeypatch):
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    torch.set_num_threads(1)
    options = dict(
        train_data=str(write_rankings(tmp_path, "train", 16, seed=5)),  # 80 pairs: 10 steps
        valid_data=str(write_rankings(tmp_path, "valid", 4, seed=6)),
        model_config=str(write_model_config(tmp_path / "model.json")),
        init="scratch", freeze_rate=0.5, lr=1e-3, pairs_per_step=8, batch_size=4, epochs=1,
        validations_per_epoch=2, num_workers=0, checkpoint_every=0,
    )
    train(TrainConfig(**options, plot=False, output_dir=str(tmp_path / "one")))

    config_file = tmp_path / "options.json"
    config_file.write_text(json.dumps({**options, "output_dir": str(tmp_path / "two")}))
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
               "-m", "imagereward.train", "--config", str(config_file), "--no-plot"]
    done = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert "2 process(es) x 4 pairs x 1 accumulation" in done.stderr
    assert done.stdout.strip().endswith(os.path.join(str(tmp_path / "two"), "best"))  # printed once, by rank 0

    one, two = curve(tmp_path / "one"), curve(tmp_path / "two")
    assert [r[:2] for r in two] == [r[:2] for r in one]  # same steps and validations, each logged once
    loss_difference = max(abs(a[2] - b[2]) for a, b in zip(one, two))
    weights_one = load_file(str(tmp_path / "one" / "last" / "model.safetensors"))
    weights_two = load_file(str(tmp_path / "two" / "last" / "model.safetensors"))
    assert weights_two.keys() == weights_one.keys()  # saved unwrapped: no "module." prefix
    # Some parameters have a gradient of exactly zero in exact arithmetic, and Adam turns the
    # rounding noise of their gradient into steps of size lr, so the two runs drift apart there.
    # Compare everything else.
    weight_difference = max((weights_one[k] - weights_two[k]).abs().max().item()
                            for k in weights_one if not gradient_free(k, text_layers=2))
    print(f"torchrun: max loss difference {loss_difference:.3g}, max weight difference {weight_difference:.3g}")
    assert loss_difference <= TOLERANCE
    assert [a[3] for a in one] == pytest.approx([b[3] for b in two], abs=1e-9)
    assert weight_difference <= TOLERANCE


RANK_SCRIPT = """
import os, sys
from imagereward.train.config import TrainConfig, load_config
from imagereward.train.trainer import train
train(load_config(sys.argv[1]))
names = sorted(open(f"/proc/self/task/{t}/comm").read().strip() for t in os.listdir("/proc/self/task"))
print(f"rank {os.environ['RANK']} threads after training: {names}", flush=True)
"""


@pytest.mark.skipif(not os.path.isdir("/proc/self/task"), reason="thread names come from Linux /proc")
def test_no_communication_threads_outlive_training(tmp_path, monkeypatch):
    """After train() returns, its process group is really gone: no gloo thread is left to run
    into interpreter shutdown (where one aborted rank 1 now and then, after rank 0 wrote best/)."""
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    options = dict(
        train_data=str(write_rankings(tmp_path, "train", 4, seed=5)),  # 20 pairs: 2 steps
        valid_data=str(write_rankings(tmp_path, "valid", 2, seed=6)),
        model_config=str(write_model_config(tmp_path / "model.json")),
        init="scratch", pairs_per_step=8, batch_size=4, epochs=1, validations_per_epoch=1,
        num_workers=0, checkpoint_every=0, plot=False, output_dir=str(tmp_path / "run"),
    )
    (tmp_path / "options.json").write_text(json.dumps(options))
    (tmp_path / "rank.py").write_text(RANK_SCRIPT)
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
               str(tmp_path / "rank.py"), str(tmp_path / "options.json")]
    done = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    # The two ranks share one stdout pipe, so their lines may interleave: match reports, not lines.
    reports = dict(re.findall(r"rank (\d) threads after training: (\[[^\]]*\])", done.stdout))
    assert sorted(reports) == ["0", "1"], done.stdout
    for rank, threads in reports.items():
        assert "gloo" not in threads, f"rank {rank}: {threads}"


def test_a_gpu_job_picks_its_device_without_tripping_on_local_imports(monkeypatch):
    """The CUDA branch of init_distributed, on a machine without CUDA (its calls stubbed):
    a single-process GPU job takes the current device (a function-local ``import torch...``
    once made ``torch`` unbound there)."""
    from imagereward import distributed

    chosen = []
    monkeypatch.setattr(distributed, "resolve_device", lambda device: torch.device("cuda"))
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 0)
    monkeypatch.setattr(torch.cuda, "set_device", chosen.append)
    for key in ("WORLD_SIZE", "RANK", "LOCAL_RANK"):
        monkeypatch.delenv(key, raising=False)
    context = distributed.init_distributed("cuda")
    assert chosen == [torch.device("cuda", 0)] and context.device == torch.device("cuda", 0)
    assert not context.owns_group
