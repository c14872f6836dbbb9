"""The original training recipe and ours on a task only the prompt decides, side by side.

    python benchmarks/train_original.py [--original-src PATH/train/src] [--lrs 5e-6,1e-4,1e-3]

The task and the tiny model are those of ``tests/test_train_prompt_decided.py``: each
prompt says which half of a 32 px image is bright; each prompt has two images with that
half bright (preferred) and two with the opposite, so the images alone carry no signal;
320 training prompts (1,280 pairs), 64 held-out prompts (256 pairs); a ViT of 2 blocks,
width 32, patch 8, and a BERT of 2 layers, width 32, with cross-attention.

For each learning rate it trains, for ``--epochs`` epochs of 16-pair batches:

- **original**: the original repository's ``train/src`` code (THUDM/ImageReward on
  GitHub: its ``ImageReward`` training model with its MLP head and head initialisation,
  its pair encoding and loss, Adam over all parameters, its warm-up and cosine schedule),
  run in the reference environment at the same tiny sizes (``train_original_side.py``).
  ``--original-src`` names a checkout's ``train/src``; by default the tool exports it
  from a local clone given by ``IMAGEREWARD_ORIGINAL_REPO`` into its work folder. The
  original code is run, never copied into this repository;
- **original+lecun-head**: the same, with one change: the head's layers drawn from
  N(0, 1/fan_in) (our default ``--head-init lecun``) instead of the original's
  N(0, 1/(d+1));
- **original+lecun-head+no-head-dropout**, **original+no-head-dropout**: the same with
  the head's dropout off (the original's 0.2, 0.2, 0.1);
- **ours+original-head**: ``imagereward train --init scratch --head-init original``
  (the original head initialisation, otherwise our defaults);
- **ours**: ``imagereward train --init scratch`` with our defaults (head init
  N(0, 1/fan_in), no dropout when training from random weights);
- **ours+dropout-on**: the same with ``--dropout on``.

The tiny model's configuration carries the architecture's dropout (text 0.1, drop-path
0.1, head 0.2, 0.2, 0.1), as a user's JSON configuration that does not set it would.
The original side runs without text dropout and drop-path (its tiny ``med_config``
sets them to 0) and with its head's own dropout unless a recipe says otherwise.

and prints the held-out pair accuracy after each epoch, as JSON.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Dict, List, Optional

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE.parent / "tests"), str(HERE)]

import refenv  # noqa: E402
from test_train_prompt_decided import model_config, write_task  # noqa: E402

MIRROR = Path("/work/.mirror/THUDM+ImageReward/repo")
RECIPES = ("original", "original+lecun-head", "original+lecun-head+no-head-dropout", "original+no-head-dropout",
           "ours+original-head", "ours", "ours+dropout-on")


def original_src(args: argparse.Namespace, workdir: Path) -> str:
    """``train/src`` of the original repository: given, or exported from a local clone."""
    if args.original_src:
        return str(Path(args.original_src).resolve())
    repo = Path(os.environ.get("IMAGEREWARD_ORIGINAL_REPO", MIRROR))
    target = workdir / "original"
    target.mkdir(exist_ok=True)
    archive = subprocess.run(["git", f"--git-dir={repo}" if (repo / "HEAD").exists() else f"--git-dir={repo}/.git",
                              "archive", "HEAD", "train"], check=True, capture_output=True).stdout
    subprocess.run(["tar", "-x", "-C", str(target)], input=archive, check=True)
    return str(target / "train" / "src")


def run_original(src: str, data: Path, lr: float, head_init: str, args: argparse.Namespace,
                 workdir: Path, head_dropout: Optional[float] = None) -> Dict[str, Any]:
    request = {"head_init": head_init, "head_dropout": head_dropout,
        "original_src": src, "workdir": str(workdir), "train": str(data / "train.json"),
        "valid": str(data / "valid.json"), "lr": lr, "epochs": args.epochs, "batch_size": 16, "warmup": 0.01,
        "threads": args.threads, "seed": 0, "image_size": 32,
        "vision": {"patch_size": 8, "width": 32, "depth": 2, "heads": 2},
        "med_config": {
            "architectures": ["BertModel"], "attention_probs_dropout_prob": 0.0, "hidden_act": "gelu",
            "hidden_dropout_prob": 0.0, "hidden_size": 32, "initializer_range": 0.02, "intermediate_size": 64,
            "layer_norm_eps": 1e-12, "max_position_embeddings": 64, "model_type": "bert",
            "num_attention_heads": 2, "num_hidden_layers": 2, "pad_token_id": 0, "type_vocab_size": 2,
            "vocab_size": 30524, "encoder_width": 32, "add_cross_attention": True,
        },
    }
    tag = f"{head_init}-{head_dropout}-{lr}"
    request_file, reply_file = workdir / f"original-{tag}.request.json", workdir / f"original-{tag}.reply.json"
    request_file.write_text(json.dumps(request))
    started = time.perf_counter()
    subprocess.run([refenv.reference_python(), str(HERE / "train_original_side.py"), str(request_file),
                    str(reply_file)], check=True, env=refenv.offline_env(workdir))
    reply = json.loads(reply_file.read_text())
    reply["wall_seconds"] = time.perf_counter() - started
    return reply


def run_ours(data: Path, lr: float, head_init: str, args: argparse.Namespace, workdir: Path,
             dropout: str = "auto") -> Dict[str, Any]:
    output = workdir / f"ours-{head_init}-{dropout}-{lr}"
    argv = [sys.executable, "-m", "imagereward", "train", "--train-data", str(data / "train.json"),
            "--valid-data", str(data / "valid.json"), "--model-config", str(data / "model.json"),
            "--init", "scratch", "--head-init", head_init, "--dropout", dropout,
            "--freeze-rate", "0", "--lr", str(lr),
            "--pairs-per-step", "16", "--batch-size", "16", "--epochs", str(args.epochs),
            "--validations-per-epoch", "1", "--num-workers", "0", "--no-plot",
            "--output-dir", str(output)]
    env = dict(os.environ, OMP_NUM_THREADS=str(args.threads))
    started = time.perf_counter()
    subprocess.run(argv, check=True, env=env, stdout=subprocess.DEVNULL)
    records = [json.loads(line) for line in (output / "train_log.jsonl").read_text().splitlines()]
    history = [{"step": r["step"], "valid_accuracy": r["accuracy"]} for r in records if r["type"] == "valid"]
    return {"history": history, "wall_seconds": time.perf_counter() - started}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--original-src", help="train/src of a checkout of THUDM/ImageReward")
    parser.add_argument("--lrs", default="5e-6,1e-4,1e-3")
    parser.add_argument("--epochs", type=int, default=6)
    parser.add_argument("--recipes", default=",".join(RECIPES), help=f"comma list of: {', '.join(RECIPES)}")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--workdir", type=Path)
    args = parser.parse_args()
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="imagereward-train-original-"))
    workdir.mkdir(parents=True, exist_ok=True)
    data = workdir / "data"
    write_task(data, "train", 320, seed=0)
    write_task(data, "valid", 64, seed=1)
    model_config(data / "model.json", 16)
    src = original_src(args, workdir)
    results: List[Dict[str, Any]] = []
    recipes = {
        "original": lambda lr: run_original(src, data, lr, "original", args, workdir),
        "original+lecun-head": lambda lr: run_original(src, data, lr, "lecun", args, workdir),
        "original+lecun-head+no-head-dropout": lambda lr: run_original(src, data, lr, "lecun", args, workdir, 0.0),
        "original+no-head-dropout": lambda lr: run_original(src, data, lr, "original", args, workdir, 0.0),
        "ours+original-head": lambda lr: run_ours(data, lr, "original", args, workdir),
        "ours": lambda lr: run_ours(data, lr, "lecun", args, workdir),
        "ours+dropout-on": lambda lr: run_ours(data, lr, "lecun", args, workdir, "on"),
    }
    for lr in [float(v) for v in args.lrs.split(",")]:
        for name in args.recipes.split(","):
            result = recipes[name.strip()](lr)
            accuracies = [h["valid_accuracy"] for h in result["history"]]
            row = {"recipe": name.strip(), "lr": lr, "held_out_accuracy_by_epoch": [round(a, 3) for a in accuracies],
                   "best": max(accuracies), "wall_seconds": round(result["wall_seconds"], 1)}
            print(json.dumps(row), flush=True)
            results.append(row)
    print(json.dumps({"epochs": args.epochs, "results": results}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
