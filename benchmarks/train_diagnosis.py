"""Does training reach the text path? Evidence on a task only the prompt decides.

    python benchmarks/train_diagnosis.py [--steps 160]

On the task of ``tests/test_train_prompt_decided.py`` (the prompt says which half of the
image is bright; images alone carry no signal) and the tiny test model, it prints:

1. gradient norms at initialisation of the text embeddings, the self-attention, the
   cross-attention, the image encoder and the reward head, for one batch of pairs;
2. train-mode and eval-mode rewards of the same weights (dropout off), which must agree:
   the inference fast paths (dropped padding columns, the ``[CLS]``-only last layer, the
   folded cross-attention, oneDNN linear layers) serve both;
3. that each pair's prompt tokens are those of its images' prompt (data pairing);
4. how much the reward depends on the prompt (the std over the four sides' prompts for
   fixed images) at initialisation and after ``--steps`` training steps, with the held-out
   pair accuracy; for ``max_text_length`` 16 and 8 (where one wording's side word is cut);
5. the same task learned by a minimal plain-PyTorch model of the same shape
   (``nn.TransformerEncoder`` image tower, ``nn.TransformerDecoder`` text tower with
   cross-attention, an MLP head), as an independent check that the task is learnable.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path
from typing import Dict, List

import torch
import torch.nn.functional as F
from torch import nn

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE.parent / "tests")]

from test_train_prompt_decided import HALVES, WORDINGS, model_config, write_task  # noqa: E402

from imagereward.config import ImageRewardConfig, PreprocessConfig  # noqa: E402
from imagereward.models.image_reward import ImageRewardNet  # noqa: E402
from imagereward.preprocess import ImagePreprocessor  # noqa: E402
from imagereward.tokenizers.bert import BertTokenizer  # noqa: E402
from imagereward.train.config import TrainConfig  # noqa: E402
from imagereward.train.data import PairDataset, collate  # noqa: E402
from imagereward.train.initialize import build_model  # noqa: E402
from imagereward.train.evaluate import pair_rewards, pairwise_loss  # noqa: E402
from imagereward.train.sources import read_groups  # noqa: E402


def grad_norms(net: ImageRewardNet, batch: Dict[str, torch.Tensor]) -> Dict[str, float]:
    net.train()
    net.zero_grad()
    better, worse = pair_rewards(net, batch, torch.device("cpu"))
    pairwise_loss(better, worse).mean().backward()
    parts = {"text embeddings": "blip.text_encoder.embeddings", "self-attention": ".attention.",
             "cross-attention": ".crossattention.", "image encoder": "blip.visual_encoder", "reward head": "mlp."}
    norms = {}
    for label, key in parts.items():
        grads = [p.grad for n, p in net.named_parameters() if key in n and p.grad is not None]
        norms[label] = float(torch.sqrt(sum((g.float() ** 2).sum() for g in grads))) if grads else 0.0
    return norms


def prompt_dependence(net: ImageRewardNet, tokenizer: BertTokenizer, pixels: torch.Tensor) -> float:
    """Mean over images of the std of the reward over one prompt per side."""
    prompts = [WORDINGS[0].format(side) for side in HALVES]
    tokens = tokenizer(prompts)
    net.eval()
    with torch.no_grad():
        rewards = torch.stack([
            net(tokens["input_ids"], tokens["attention_mask"], image[None].expand(len(prompts), -1, -1, -1))
            for image in pixels
        ])
    return float(rewards.std(dim=1).mean())


def accuracy(net: ImageRewardNet, dataset: PairDataset) -> float:
    net.eval()
    batch = collate([dataset[i] for i in range(len(dataset))])
    with torch.no_grad():
        better, worse = pair_rewards(net, batch, torch.device("cpu"))
    return float((better > worse).float().mean())


def scratch_model(model_config_path: Path) -> ImageRewardNet:
    """The network as ``imagereward train --init scratch`` starts it (position embeddings and
    class token drawn, the head's variance-preserving initialisation), seed 0."""
    return build_model(TrainConfig(init="scratch", model_config=str(model_config_path), seed=0))


def train_ours(model_config_path: Path, train_set: PairDataset, valid_set: PairDataset, steps: int,
               tokenizer: BertTokenizer, probe: torch.Tensor) -> Dict[str, float]:
    net = scratch_model(model_config_path)
    report = {"prompt_std_at_init": prompt_dependence(net, tokenizer, probe),
              "accuracy_at_init": accuracy(net, valid_set)}
    optimizer = torch.optim.AdamW(net.parameters(), lr=1e-3)
    generator = torch.Generator().manual_seed(0)
    for _ in range(steps):
        net.train()
        rows = torch.randint(len(train_set), (16,), generator=generator).tolist()
        better, worse = pair_rewards(net, collate([train_set[i] for i in rows]), torch.device("cpu"))
        loss = pairwise_loss(better, worse).mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    report.update(prompt_std_after=prompt_dependence(net, tokenizer, probe),
                  accuracy_after=accuracy(net, valid_set), last_train_loss=float(loss.detach()))
    return report


class PlainModel(nn.Module):
    """The same shape in plain PyTorch: patches -> encoder; tokens -> decoder with cross-attention."""

    def __init__(self, width: int, vocab: int, patch: int, image_size: int) -> None:
        super().__init__()
        self.patch = nn.Conv2d(3, width, patch, patch)
        self.cls = nn.Parameter(torch.zeros(1, 1, width))
        self.pos = nn.Parameter(torch.randn(1, (image_size // patch) ** 2 + 1, width) * 0.02)
        layer = dict(d_model=width, nhead=2, dim_feedforward=2 * width, dropout=0.0, batch_first=True)
        self.vision = nn.TransformerEncoder(nn.TransformerEncoderLayer(**layer), 2)
        self.embed = nn.Embedding(vocab, width)
        self.text_pos = nn.Parameter(torch.randn(1, 64, width) * 0.02)
        self.text = nn.TransformerDecoder(nn.TransformerDecoderLayer(**layer), 2)
        self.head = nn.Sequential(nn.Linear(width, 16), nn.Linear(16, 1))

    def forward(self, ids: torch.Tensor, mask: torch.Tensor, pixels: torch.Tensor) -> torch.Tensor:
        x = self.patch(pixels).flatten(2).transpose(1, 2)
        image = self.vision(torch.cat([self.cls.expand(len(x), -1, -1), x], 1) + self.pos)
        text = self.embed(ids) + self.text_pos[:, : ids.shape[1]]
        out = self.text(text, image, tgt_key_padding_mask=mask == 0)
        return self.head(out[:, 0]).squeeze(-1)


def train_plain(config: ImageRewardConfig, train_set: PairDataset, valid_set: PairDataset, steps: int) -> float:
    torch.manual_seed(0)
    model = PlainModel(config.text.hidden_size, config.text.vocab_size, config.vision.patch_size,
                       config.vision.image_size)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    generator = torch.Generator().manual_seed(0)

    def rewards(batch: Dict[str, torch.Tensor]) -> List[torch.Tensor]:
        return [model(batch["input_ids"], batch["attention_mask"], batch[k]) for k in ("better", "worse")]

    for _ in range(steps):
        model.train()
        rows = torch.randint(len(train_set), (16,), generator=generator).tolist()
        better, worse = rewards(collate([train_set[i] for i in rows]))
        loss = -F.logsigmoid(better - worse).mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    model.eval()
    with torch.no_grad():
        better, worse = rewards(collate([valid_set[i] for i in range(len(valid_set))]))
    return float((better > worse).float().mean())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--steps", type=int, default=160)
    args = parser.parse_args()
    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        train_json, valid_json = write_task(root, "train", 320, seed=0), write_task(root, "valid", 64, seed=1)
        results: Dict[str, object] = {}
        for length in (16, 8):
            config_path = model_config(root / f"m{length}.json", length)
            config = ImageRewardConfig.from_dict(json.loads(config_path.read_text()))
            tokenizer = BertTokenizer(max_length=config.max_text_length)
            preprocess = ImagePreprocessor(PreprocessConfig(image_size=config.vision.image_size))
            train_set = PairDataset(read_groups(str(train_json)), tokenizer, preprocess)
            valid_set = PairDataset(read_groups(str(valid_json)), tokenizer, preprocess)
            probe = torch.stack([valid_set[i]["better"] for i in range(8)])
            if length == 16:
                net = scratch_model(config_path)
                batch = collate([train_set[i] for i in range(16)])
                results["grad_norms_at_init"] = grad_norms(net, batch)
                with torch.no_grad():
                    net.train()
                    trained = torch.cat(pair_rewards(net, batch, torch.device("cpu")))
                    net.eval()
                    evaluated = torch.cat(pair_rewards(net, batch, torch.device("cpu")))
                results["train_vs_eval_max_abs_diff"] = float((trained - evaluated).abs().max())
                groups = read_groups(str(train_json))
                expected = tokenizer([groups[g].prompt for g, _, _ in train_set.pairs])["input_ids"]
                got = torch.stack([train_set[i]["input_ids"] for i in range(len(train_set))])
                results["pairs_with_their_prompts_tokens"] = f"{int((got == expected).all(1).sum())}/{len(got)}"
                results["plain_pytorch_accuracy_after"] = train_plain(config, train_set, valid_set, args.steps)
            results[f"ours_max_text_length_{length}"] = train_ours(
                config_path, train_set, valid_set, args.steps, tokenizer, probe)
            results[f"prompts_cut_at_{length}"] = len(tokenizer.truncated([g.prompt for g in read_groups(str(train_json))]))
        print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
