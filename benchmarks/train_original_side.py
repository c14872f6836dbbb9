"""The original ImageReward training recipe on the prompt-decided task (run by train_original.py).

Runs in the reference environment (torch, torchvision, transformers 4.36, timm) with the
original repository's ``train/src`` folder first on ``sys.path`` (given, never copied
here). It builds the original training model, ``ImageReward`` of ``train/src/ImageReward.py``
(BLIP's ViT and BERT with cross-attention, the original MLP head and its initialisation),
at the tiny sizes of our tests, and trains it as ``train/src/train.py`` does in
``--rank_pair`` mode: the original pair encoding and loss (``loss_func``), Adam over all
parameters, the original warm-up and cosine schedule (``get_learning_rate_scheduler``).
``head_init`` "lecun" re-draws the head's layers from N(0, 1/fan_in) (the one change
tried; "original" keeps the original's). Only the data loading is ours (the original
reads its own data set files): the same
images through the original ``_transform``, the prompts through the original tokenizer
settings (``max_length=35``), pairs as ``rank_pair_dataset`` makes them.

    python train_original_side.py REQUEST.json REPLY.json
"""

from __future__ import annotations

import importlib.machinery
import json
import os
import random
import sys
import time
import types


def main(request_path: str, reply_path: str) -> None:
    request = json.load(open(request_path))
    src = request["original_src"]
    workdir = request["workdir"]
    stub = types.ModuleType("tensorboardX")  # the original's logging only; not installed here
    stub.__spec__ = importlib.machinery.ModuleSpec("tensorboardX", None)
    stub.SummaryWriter = object
    sys.modules["tensorboardX"] = stub
    sys.argv = ["train.py", "--rank_pair", "--batch_size", str(request["batch_size"]), "--lr", str(request["lr"]),
                "--epochs", str(request["epochs"]), "--fix_rate", "0", "--warmup", str(request["warmup"])]
    os.chdir(os.path.join(src, ".."))  # the original reads config/config.yaml relative to train/
    sys.path.insert(0, src)
    import torch

    torch.set_num_threads(request["threads"])
    from config.options import config, opts

    med_config = os.path.join(workdir, "tiny_med_config.json")
    with open(med_config, "w") as handle:
        json.dump(request["med_config"], handle)
    config["med_config"] = med_config
    config["blip_path"] = ""  # random initialisation, as --init scratch
    config["BLIP"]["image_size"] = request["image_size"]
    config["ImageReward"]["mlp_dim"] = request["med_config"]["hidden_size"]

    import models.blip_pretrain as blip_pretrain
    from models.vit import VisionTransformer

    vision = request["vision"]

    def tiny_vit(vit, image_size, use_grad_checkpointing=False, ckpt_layer=0, drop_path_rate=0):
        encoder = VisionTransformer(img_size=image_size, patch_size=vision["patch_size"], embed_dim=vision["width"],
                                    depth=vision["depth"], num_heads=vision["heads"], drop_path_rate=0.0)
        return encoder, vision["width"]

    blip_pretrain.create_vit = tiny_vit  # looked up when BLIP_Pretrain is built
    from config.learning_rates import get_learning_rate_scheduler
    from ImageReward import ImageReward, _transform
    from rank_pair_dataset import init_tokenizer
    from train import loss_func
    from PIL import Image

    torch.manual_seed(request["seed"])
    random.seed(request["seed"])
    preprocess = _transform(request["image_size"])
    tokenizer = init_tokenizer()

    def pairs_of(path: str):
        items = json.load(open(path))
        root = os.path.dirname(path)
        pairs = []
        for item in items:
            images = [preprocess(Image.open(os.path.join(root, g))) for g in item["generations"]]
            text = tokenizer(item["prompt"], padding="max_length", truncation=True, max_length=35, return_tensors="pt")
            ranks = item["ranking"]
            for left in range(len(ranks)):
                for right in range(left + 1, len(ranks)):
                    if ranks[left] == ranks[right]:
                        continue
                    better, worse = (left, right) if ranks[left] < ranks[right] else (right, left)
                    pairs.append({"text_ids": text.input_ids, "text_mask": text.attention_mask,
                                  "img_better": images[better], "img_worse": images[worse]})
        return pairs

    def batches(pairs, size, shuffle):
        order = list(range(len(pairs)))
        if shuffle:
            random.shuffle(order)
        for start in range(0, len(order), size):
            chosen = [pairs[i] for i in order[start:start + size]]
            yield {key: torch.stack([p[key] for p in chosen]) for key in chosen[0]}

    train_pairs, valid_pairs = pairs_of(request["train"]), pairs_of(request["valid"])
    model = ImageReward("cpu")
    if request["head_init"] == "lecun":  # a variance-preserving head
        with torch.no_grad():
            for layer in model.mlp.layers:
                if isinstance(layer, torch.nn.Linear):
                    layer.weight.normal_(0.0, layer.in_features ** -0.5)
                    layer.bias.zero_()
    if request.get("head_dropout") is not None:  # the head's dropout rates (original: 0.2, 0.2, 0.1)
        for layer in model.mlp.layers:
            if isinstance(layer, torch.nn.Dropout):
                layer.p = request["head_dropout"]
    optimizer = torch.optim.Adam(model.parameters(), lr=opts.lr, betas=(opts.adam_beta1, opts.adam_beta2),
                                 eps=opts.adam_eps)
    steps_per_epoch = (len(train_pairs) + opts.batch_size - 1) // opts.batch_size
    opts.train_iters = opts.epochs * steps_per_epoch
    scheduler = get_learning_rate_scheduler(optimizer, opts)

    def accuracy() -> float:
        model.eval()
        right = total = 0
        with torch.no_grad():
            for batch in batches(valid_pairs, 64, False):
                reward = model(batch)
                right += int((reward[:, 0] > reward[:, 1]).sum())
                total += reward.shape[0]
        return right / total

    history = [{"step": 0, "valid_accuracy": accuracy()}]
    started = time.perf_counter()
    step = 0
    for epoch in range(opts.epochs):
        losses = []
        for batch in batches(train_pairs, opts.batch_size, True):
            model.train()
            loss, _, _ = loss_func(model(batch))
            loss.backward()
            optimizer.step()
            optimizer.zero_grad()
            scheduler.step()
            losses.append(float(loss))
            step += 1
        history.append({"step": step, "epoch": epoch + 1, "train_loss": sum(losses) / len(losses),
                        "valid_accuracy": accuracy()})
    json.dump({"history": history, "seconds": time.perf_counter() - started, "torch": torch.__version__,
               "train_pairs": len(train_pairs), "valid_pairs": len(valid_pairs),
               "parameters": sum(p.numel() for p in model.parameters())}, open(reply_path, "w"))


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
