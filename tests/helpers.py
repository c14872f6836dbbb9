"""Shared test helpers: paths to ../shared, tiny configurations, random checkpoints."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Dict

import torch

from imagereward.config import HeadConfig, ImageRewardConfig, TextConfig, VisionConfig
from imagereward.models import ImageRewardNet

REPO = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("IMAGEREWARD_SHARED", REPO.parent / "shared"))
BERT_VOCAB = SHARED / "data" / "bert-base-uncased-vocab.txt"
CLIP_BPE = SHARED / "data" / "bpe_simple_vocab_16e6.txt.gz"
REFERENCE_DATA = SHARED / "reference" / "data"
ASSETS = [REFERENCE_DATA / "assets" / f"{i}.webp" for i in range(1, 5)]
TEST_JSON = REFERENCE_DATA / "test.json"


def tiny_config(image_size: int = 32) -> ImageRewardConfig:
    """A few-thousand-parameter ImageReward with the real vocabulary size."""
    return ImageRewardConfig(
        vision=VisionConfig(image_size=image_size, patch_size=16, width=32, depth=2, heads=2),
        text=TextConfig(
            hidden_size=32,
            num_layers=2,
            num_heads=2,
            intermediate_size=64,
            max_position_embeddings=64,
            encoder_width=32,
        ),
        head=HeadConfig(hidden_dims=(24, 16, 8, 4)),
    )


def random_state_dict(config: ImageRewardConfig, seed: int = 0, head_scale: float = 10.0) -> Dict[str, torch.Tensor]:
    """Weights of a randomly initialised net in the original ``ImageReward.pt`` layout.

    The head is scaled so that different images get visibly different rewards, and
    the keys the original carries but does not use are included.
    """
    torch.manual_seed(seed)
    net = ImageRewardNet(config)
    with torch.no_grad():
        for name, param in net.named_parameters():
            if name.startswith("blip.") and name.endswith("weight") and param.ndim >= 2:
                param.normal_(0.0, 0.05)
        for module in net.mlp.layers:
            if isinstance(module, torch.nn.Linear):
                module.weight.normal_(0.0, module.in_features ** -0.5)
        net.mlp.layers[-1].weight.mul_(head_scale)
    state = net.state_dict()
    text, vision = config.text, config.vision
    state["blip.text_encoder.embeddings.position_ids"] = torch.arange(text.max_position_embeddings)[None]
    state["blip.vision_proj.weight"] = torch.randn(256, vision.width)
    state["blip.vision_proj.bias"] = torch.zeros(256)
    state["blip.text_proj.weight"] = torch.randn(256, text.hidden_size)
    state["blip.text_proj.bias"] = torch.zeros(256)
    return state


def save_tiny_model(root: Path, seed: int = 0) -> str:
    """A tiny random ImageReward written with ``save_pretrained``: loads with no config flags."""
    import imagereward

    config = tiny_config()
    torch.save(random_state_dict(config, seed=seed), root / "ImageReward.pt")
    previous = os.environ.get("IMAGEREWARD_BERT_VOCAB")
    os.environ["IMAGEREWARD_BERT_VOCAB"] = str(BERT_VOCAB)
    try:
        model = imagereward.load(str(root / "ImageReward.pt"), config=config, device="cpu")
    finally:
        if previous is None:
            del os.environ["IMAGEREWARD_BERT_VOCAB"]
        else:
            os.environ["IMAGEREWARD_BERT_VOCAB"] = previous
    return str(imagereward.save_pretrained(model, str(root / "model")))


def run_cli(capsys, *argv):
    """``imagereward ARGV...`` in this process: exit code, stdout and stderr."""
    from imagereward import cli

    code = cli.main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


class RecordingLinearOp:
    """Stands in for ``torch.ops.mkldnn._linear_pointwise``: records each call's post-op."""

    def __init__(self, op) -> None:
        self.op, self.post_ops = op, []

    def __call__(self, x, weight, bias, attr, scalars, algorithm):
        self.post_ops.append(attr)
        return self.op(x, weight, bias, attr, scalars, algorithm)

    def binary(self, x, other, weight, bias, attr):
        self.post_ops.append(attr)
        return self.op.binary(x, other, weight, bias, attr)
