"""Dropout and learning from random weights, at the sizes of the issue that reported it.

    python benchmarks/train_dropout.py [--epochs 20] [--dropouts auto,on]

The prompt-decided task of ``tests/test_train_prompt_decided.py`` with 64 px images
(320 training prompts x 4 images, 64 held-out prompts) and the model of the report: ViT
32 px, patch 8, width 48, 2 blocks; BERT width 48, 2 layers, 16 tokens; head
32-16-8-4; the architecture's dropout (text 0.1, drop-path 0.1, head 0.2, 0.2, 0.1).
Trained through ``imagereward train --init scratch --freeze-rate 0 --lr 1e-3
--pairs-per-step 16 --batch-size 16`` with each ``--dropout`` value; prints the held-out
pair accuracy after each epoch.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "tests"))

from test_train_prompt_decided import write_task  # noqa: E402

from imagereward.config import HeadConfig, ImageRewardConfig, TextConfig, VisionConfig  # noqa: E402

SIZE = 64


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--epochs", type=int, default=20)
    parser.add_argument("--dropouts", default="auto,on")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="imagereward-train-dropout-") as folder:
        run(Path(folder), args)
    return 0


def run(root: Path, args: argparse.Namespace) -> None:
    train, valid = write_task(root, "train", 320, 0, SIZE), write_task(root, "valid", 64, 1, SIZE)
    config = ImageRewardConfig(
        vision=VisionConfig(image_size=32, patch_size=8, width=48, depth=2, heads=2),
        text=TextConfig(hidden_size=48, num_layers=2, num_heads=2, intermediate_size=96,
                        max_position_embeddings=64, encoder_width=48),
        head=HeadConfig(hidden_dims=(32, 16, 8, 4)), max_text_length=16,
    )
    model = root / "model.json"
    model.write_text(json.dumps(config.to_dict()))
    for dropout in args.dropouts.split(","):
        output = root / f"run-{dropout}"
        started = time.perf_counter()
        subprocess.run([sys.executable, "-m", "imagereward", "train", "--train-data", str(train),
                        "--valid-data", str(valid), "--model-config", str(model), "--init", "scratch",
                        "--freeze-rate", "0", "--lr", "1e-3", "--pairs-per-step", "16", "--batch-size", "16",
                        "--epochs", str(args.epochs), "--validations-per-epoch", "1", "--num-workers", "0",
                        "--no-plot", "--dropout", dropout, "--output-dir", str(output)],
                       check=True, stdout=subprocess.DEVNULL)
        records = [json.loads(line) for line in (output / "train_log.jsonl").read_text().splitlines()]
        accuracy = [round(r["accuracy"], 3) for r in records if r["type"] == "valid"]
        print(json.dumps({"dropout": dropout, "held_out_accuracy_by_epoch": accuracy,
                          "seconds": round(time.perf_counter() - started, 1)}), flush=True)


if __name__ == "__main__":
    sys.exit(main())
