"""Steps a tiny ImageReward needs to learn a synthetic preference task, per head initialisation.

The task is the training tests' own (tests/test_train_synthetic.py: prompts name a colour and
a shape; images are right in both, one or neither). The model is trained from scratch with a
constant learning rate and validated every few steps; a run has learned the task when its
validation accuracy reaches the target. Prints one row per initialisation.

    python benchmarks/head_init.py            # about 2 minutes on 2 CPU cores
"""

from __future__ import annotations

import argparse
import math
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))

from test_train_synthetic import write_model_config, write_rankings  # noqa: E402

from imagereward.train.config import HEAD_INITS, TrainConfig  # noqa: E402
from imagereward.train.logs import read_log  # noqa: E402
from imagereward.train.trainer import train  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--prompts", type=int, default=100, help="training prompts (5 pairs each)")
    parser.add_argument("--epochs", type=int, default=12)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--target", type=float, default=0.9, help="validation accuracy that counts as learned")
    args = parser.parse_args()
    torch.set_num_threads(1)
    print(f"torch {torch.__version__}, {platform.processor() or platform.machine()}, 1 thread")
    print(f"{'head init':<10} {'steps to learn':>14} {'first loss':>10} {'steps at ln 2':>13} "
          f"{'best accuracy':>13} {'warned':>6} {'seconds':>7}")
    with tempfile.TemporaryDirectory() as root:
        data = Path(root)
        config = dict(
            train_data=str(write_rankings(data, "train", args.prompts, seed=1)),
            valid_data=str(write_rankings(data, "valid", 40, seed=2)),
            model_config=str(write_model_config(data / "model.json")),
            init="scratch", freeze_rate=0.0, lr=args.lr, lr_schedule="constant", pairs_per_step=16,
            batch_size=16, epochs=args.epochs, validations_per_epoch=4, num_workers=0,
            checkpoint_every=0, plot=False,
        )
        for head_init in HEAD_INITS:
            output = os.path.join(root, head_init)
            started = time.monotonic()
            train(TrainConfig(**config, head_init=head_init, output_dir=output))
            seconds = time.monotonic() - started
            log = read_log(os.path.join(output, "train_log.jsonl"))
            valid = [r for r in log if r["type"] == "valid"]
            learned = next((r["step"] for r in valid if r["accuracy"] >= args.target), None)
            stalled = max((r["step"] for r in valid if abs(r["loss"] - math.log(2)) < 1e-3), default=0)
            warned = any(r["type"] == "warning" for r in log)
            print(f"{head_init:<10} {learned if learned is not None else 'not learned':>14} "
                  f"{valid[0]['loss']:>10.6f} {stalled:>13} {max(r['accuracy'] for r in valid):>13.3f} "
                  f"{str(warned):>6} {seconds:>7.0f}")


if __name__ == "__main__":
    main()
