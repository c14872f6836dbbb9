"""Training learns what the prompt asks for, not only what the image shows.

The task: each prompt says which half of the image is bright ("the bright half is on the
left", four wordings, four sides); each prompt has two images with that half bright and
two with the opposite half bright, and the first are preferred. Every image kind is as
often preferred as not, so the images alone carry no signal: only the text path, through
the cross-attention, can learn it.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import random
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from helpers import run_cli
from test_train_synthetic import write_model_config

SIZE = 32
OPPOSITE = {"left": "right", "right": "left", "top": "bottom", "bottom": "top"}
WORDINGS = ("the bright half is on the {}", "a picture lit on the {}", "light on the {} side", "{} half bright")


def halves(size: int) -> dict:
    """The pixels of each half of a ``size`` square, by side."""
    half = size // 2
    return {"left": (slice(None), slice(0, half)), "right": (slice(None), slice(half, size)),
            "top": (slice(0, half), slice(None)), "bottom": (slice(half, size), slice(None))}


HALVES = halves(SIZE)


def _image(side: str, rng: np.random.Generator, size: int) -> Image.Image:
    pixels = rng.integers(20, 90, (size, size, 3)).astype(np.uint8)
    bright = halves(size)[side]
    pixels[bright] = rng.integers(170, 250, pixels[bright].shape)
    return Image.fromarray(pixels)


def write_task(root: Path, name: str, prompts: int, seed: int, size: int = SIZE) -> Path:
    """``<root>/<name>.json`` in the test.json format: 4 images of ``size`` px per prompt, 4 pairs."""
    rng, choose = np.random.default_rng(seed), random.Random(seed)
    (root / name).mkdir(parents=True, exist_ok=True)
    items = []
    for index in range(prompts):
        side = choose.choice(list(HALVES))
        kinds = [side, side, OPPOSITE[side], OPPOSITE[side]]
        order = list(range(4))
        choose.shuffle(order)
        paths = []
        for k in order:
            path = f"{name}/{index}_{k}.png"
            _image(kinds[k], rng, size).save(root / path)
            paths.append(path)
        items.append({"id": str(index), "prompt": choose.choice(WORDINGS).format(side), "generations": paths,
                      "ranking": [1 if kinds[k] == side else 2 for k in order]})
    path = root / f"{name}.json"
    path.write_text(json.dumps(items))
    return path


def model_config(path: Path, max_text_length: int) -> Path:
    """The tiny test model, with room for every wording's tokens (9 with [CLS] and [SEP]) or not,
    and the architecture's own dropout (text 0.1, drop-path 0.1, head 0.2, 0.2, 0.1), as a
    configuration that does not set it has; ``--init scratch`` turns it off."""
    from imagereward.config import HeadConfig, TextConfig, VisionConfig

    write_model_config(path)
    config = json.loads(path.read_text())
    config["max_text_length"] = max_text_length
    config["head"]["dropouts"] = list(HeadConfig().dropouts)
    config["vision"]["drop_path_rate"] = VisionConfig().drop_path_rate
    config["text"]["hidden_dropout"] = TextConfig().hidden_dropout
    config["text"]["attention_dropout"] = TextConfig().attention_dropout
    path.write_text(json.dumps(config))
    return path


def best_validation(run: Path) -> dict:
    records = [json.loads(line) for line in (run / "train_log.jsonl").read_text().splitlines()]
    return max((r for r in records if r["type"] == "valid"), key=lambda r: r["accuracy"])


def test_the_text_path_learns_a_preference_the_prompt_decides(tmp_path, capsys):
    torch.set_num_threads(1)
    data = tmp_path / "data"
    argv = ["train", "--train-data", write_task(data, "train", 320, seed=0),
            "--valid-data", write_task(data, "valid", 64, seed=1),
            "--model-config", model_config(data / "model.json", 16),
            "--init", "scratch", "--freeze-rate", "0", "--lr", "1e-3", "--pairs-per-step", "16",
            "--batch-size", "16", "--epochs", "6", "--validations-per-epoch", "2", "--num-workers", "0",
            "--no-plot", "--output-dir", tmp_path / "run"]
    started = time.monotonic()
    code, _, err = run_cli(capsys, *argv)
    seconds = time.monotonic() - started
    assert code == 0, err
    best = best_validation(tmp_path / "run")
    print(f"prompt-decided task: held-out accuracy {best['accuracy']:.3f} at step {best['step']}, {seconds:.0f} s")
    assert best["accuracy"] >= 0.9 and seconds < 180
    assert "are cut" not in err


def test_prompts_cut_at_max_text_length_are_named_before_training(tmp_path):
    """Words past max_text_length cannot decide a reward; training says so at its start."""
    from imagereward.train import trainer as trainer_module
    from imagereward.train.config import TrainConfig

    data = tmp_path / "data"
    config = TrainConfig(train_data=str(write_task(data, "train", 16, seed=0)),
                         valid_data=str(write_task(data, "valid", 4, seed=1)),
                         model_config=str(model_config(data / "model.json", 8)), init="scratch",
                         pairs_per_step=16, batch_size=16, num_workers=0, plot=False,
                         output_dir=str(tmp_path / "run"))
    from imagereward.distributed import init_distributed, shutdown

    context = init_distributed(config.device)
    messages = []
    handler = logging.Handler(logging.WARNING)
    handler.emit = lambda record: messages.append(record.getMessage())
    trainer_module.logger.addHandler(handler)
    try:
        trainer_module.Trainer(config, context, None)
        cut = [m for m in messages if "are cut" in m]
        assert len(cut) == 1 and "max_text_length (8 tokens" in cut[0]
        messages.clear()
        longer = dataclasses.replace(config, model_config=str(model_config(data / "m16.json", 16)))
        trainer_module.Trainer(longer, context, None)
        assert not [m for m in messages if "are cut" in m]
    finally:
        trainer_module.logger.removeHandler(handler)
        shutdown(context, wait_for_others=True)


def test_init_scratch_trains_without_dropout_unless_told(tmp_path):
    """Dropout stops a model trained from random weights from learning what the prompt decides
    (benchmarks/train_original.py, docs/training.md): off by default for --init scratch, the
    architecture's own for the paper's recipe, as given when given."""
    from torch import nn

    from imagereward.train import initialize
    from imagereward.train.config import TrainConfig

    def rates(**options):
        config = TrainConfig(train_data="unused.json", model_config=str(model_config(tmp_path / "m.json", 16)),
                             **options)
        model = initialize.build_model(config)
        dropouts = [m.p for m in model.mlp.modules() if isinstance(m, nn.Dropout)]
        text = model.config.text
        return dropouts, (model.config.vision.drop_path_rate, text.hidden_dropout, text.attention_dropout)

    assert rates(init="scratch") == ([0.0, 0.0, 0.0], (0.0, 0.0, 0.0))
    assert rates(init="scratch", dropout="on") == ([0.2, 0.2, 0.1], (0.1, 0.1, 0.1))
    blip = tmp_path / "model_large.pth"
    torch.save({"model": {}}, blip)
    original = initialize.load_blip_pretrain
    initialize.load_blip_pretrain = lambda model, path: None  # the weights do not matter here
    try:
        assert rates(init="blip", init_checkpoint=str(blip)) == ([0.2, 0.2, 0.1], (0.1, 0.1, 0.1))
        assert rates(init="blip", init_checkpoint=str(blip), dropout="off")[0] == [0.0, 0.0, 0.0]
    finally:
        initialize.load_blip_pretrain = original
