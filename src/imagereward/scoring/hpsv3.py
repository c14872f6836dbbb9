"""``HPSv3``: Human Preference Score v3 (Ma et al., 2025), a reward model on Qwen2-VL-7B.

The network restates the forward pass of HPSv3's ``Qwen2VLRewardModelBT`` on
transformers' Qwen2-VL towers (:mod:`imagereward.models.qwen2_vl`): the image's
patches through the vision tower; the chat turn (:mod:`imagereward.tokenizers.qwen2_vl`)
embedded with the merged image tokens in place of its placeholders; the language
model over it with positions 0..L-1 on all three rotary sections (HPSv3 calls the
language model without Qwen2-VL's image-aware position ids, so this is what it
computes); a float32 MLP on the last hidden state at the ``<|Reward|>`` token gives
the mean and the log standard deviation of the reward. ``score`` is the mean;
:meth:`~imagereward.scoring.scorer.RewardScorer.score_details` gives both.
"""

from __future__ import annotations

import dataclasses
import json
import os
from typing import TYPE_CHECKING, Dict, Iterator, List, Optional, Tuple

import torch
from torch import nn

from ..checkpoints import load_state_dict_strict, read_state_dict, strip_prefix
from ..config import HPSv3Config
from ..errors import CheckpointError
from ..preprocess import ImagePreprocessor
from ..models.qwen2_vl import build_towers, text_setting, vision_embeddings, vision_settings
from .network import RewardNetwork, ScorerParts, TextRows, repeated_row

if TYPE_CHECKING:  # pragma: no cover
    from ..factory import BuildRequest

TOKENIZER_FILE = "tokenizer.json"
HF_CONFIG = "config.json"


def reward_head(hidden: int, widths: Tuple[int, ...], outputs: int) -> nn.Sequential:
    """HPSv3's ``rm_head``: Linear, ReLU, Dropout(0.05), Linear, ReLU, Linear (the names
    ``0``, ``3`` and ``5`` of its checkpoint)."""
    if len(widths) != 2:
        raise ValueError(f"HPSv3's head has two hidden layers, got widths {widths}")
    return nn.Sequential(
        nn.Linear(hidden, widths[0]), nn.ReLU(), nn.Dropout(0.05),
        nn.Linear(widths[0], widths[1]), nn.ReLU(), nn.Linear(widths[1], outputs),
    )


class HPSv3Score(RewardNetwork):
    """Qwen2-VL and the reward head. The builder sets :attr:`prefix_ids` (the chat turn's ids
    before the image), :attr:`image_token_id` and :attr:`reward_token_id` from the tokenizer."""

    FLOAT32_MODULES = ("rm_head",)

    def __init__(self, config: HPSv3Config) -> None:
        super().__init__()
        self.config = config
        self.visual, self.model = build_towers(config.vlm)
        self.rm_head = reward_head(text_setting(config.vlm, "hidden_size"), tuple(config.head_widths), config.outputs)
        self.patch, self.temporal, self.merge = vision_settings(config.vlm)
        self.prefix_ids: Optional[torch.Tensor] = None
        self.image_token_id = int(config.vlm["image_token_id"])
        self.reward_token_id: Optional[int] = None

    def encoders(self) -> List[nn.Module]:
        return [self.visual, self.model]

    # -- images ------------------------------------------------------------------------------
    @staticmethod
    def unpadded(pixels: torch.Tensor) -> Iterator[torch.Tensor]:
        """Each image of a NaN-padded batch ``[B, 3, H, W]`` at its own size."""
        for image in pixels:
            valid = ~torch.isnan(image[0])
            height, width = int(valid.any(dim=1).sum()), int(valid.any(dim=0).sum())
            yield image[:, :height, :width]

    def patches(self, image: torch.Tensor) -> Tuple[torch.Tensor, Tuple[int, int, int]]:
        """Qwen2-VL's flattened patches ``[h * w, 3 * T * P * P]`` of one normalised image
        ``[3, H, W]`` (repeated over the T frames of a temporal patch), and its grid."""
        patch, temporal, merge = self.patch, self.temporal, self.merge
        channels, height, width = image.shape
        rows, cols = height // patch, width // patch
        frames = image.unsqueeze(0).expand(temporal, channels, height, width)
        grouped = frames.reshape(1, temporal, channels, rows // merge, merge, patch, cols // merge, merge, patch)
        ordered = grouped.permute(0, 3, 6, 4, 7, 2, 1, 5, 8)
        return ordered.reshape(rows * cols, channels * temporal * patch * patch), (1, rows, cols)

    def image_features(self, pixels: torch.Tensor) -> Tuple[torch.Tensor, List[int]]:
        """The merged image tokens of a batch, concatenated, and each image's count."""
        flat, grids = zip(*(self.patches(image) for image in self.unpadded(pixels)))
        grid = torch.tensor(grids, dtype=torch.long, device=pixels.device)
        tokens = vision_embeddings(self.visual, torch.cat(flat), grid)
        counts = [int(rows * cols) // self.merge**2 for _, rows, cols in grids]
        return tokens, counts

    # -- the language model ---------------------------------------------------------------------
    def encode_text(self, tokens: Dict[str, torch.Tensor]) -> TextRows:
        return {"input_ids": tokens["input_ids"], "lengths": tokens["lengths"]}

    def sequences(self, text: TextRows, counts: List[int]) -> Tuple[torch.Tensor, torch.Tensor]:
        """Each pair's ids (the prefix, one placeholder per image token, the prompt's turn),
        right-padded, and the attention mask."""
        if self.prefix_ids is None or self.reward_token_id is None:
            raise RuntimeError("HPSv3Score's token ids are not set (the builder sets them)")
        device = text["input_ids"].device
        prefix = self.prefix_ids.to(device)
        rows = [
            torch.cat([prefix, prefix.new_full((count,), self.image_token_id), ids[: int(length)]])
            for ids, length, count in zip(text["input_ids"], text["lengths"], counts)
        ]
        width = max(len(row) for row in rows)
        ids = prefix.new_zeros((len(rows), width))
        mask = torch.zeros_like(ids)
        for index, row in enumerate(rows):
            ids[index, : len(row)] = row
            mask[index, : len(row)] = 1
        return ids, mask

    def head_outputs(self, text: TextRows, image_tokens: torch.Tensor, counts: List[int]) -> torch.Tensor:
        """The reward head's ``[B, 2]`` (mean, log standard deviation) of row-aligned pairs."""
        ids, mask = self.sequences(text, counts)
        embeds = self.model.embed_tokens(ids)
        placeholders = (ids == self.image_token_id).unsqueeze(-1).expand_as(embeds)
        embeds = embeds.masked_scatter(placeholders, image_tokens.to(embeds.dtype))
        positions = torch.arange(ids.shape[1], device=ids.device).view(1, 1, -1).expand(3, ids.shape[0], -1)
        hidden = self.model(inputs_embeds=embeds, attention_mask=mask, position_ids=positions, use_cache=False)[0]
        at = (ids == self.reward_token_id).int().argmax(dim=-1)
        return self.rm_head(hidden[torch.arange(ids.shape[0], device=ids.device), at].float())

    def details(self, text: TextRows, pixels: torch.Tensor) -> Dict[str, torch.Tensor]:
        outputs = self.head_outputs(text, *self.image_features(pixels))
        return {"mean": outputs[:, 0], "sigma": outputs[:, 1].exp()}

    def score_rows(self, text: TextRows, pixels: torch.Tensor) -> torch.Tensor:
        return self.head_outputs(text, *self.image_features(pixels))[:, 0]

    def score_grid(self, text: TextRows, features: Tuple[torch.Tensor, List[int]]) -> torch.Tensor:
        """Every prompt with every image: the vision tower once, the language model per pair."""
        tokens, counts = features
        prompts = text["input_ids"].shape[0]
        return torch.stack([
            self.head_outputs(repeated_row(text, row, len(counts)), tokens, counts)[:, 0] for row in range(prompts)
        ])


def read_hpsv3_checkpoint(path: str) -> Dict[str, torch.Tensor]:
    """HPSv3's tensors: a safetensors file or a ``torch.save`` state dict, bare or under ``"model"``."""
    try:
        return strip_prefix(read_state_dict(path))
    except CheckpointError:
        if path.endswith(".safetensors"):
            raise
        return strip_prefix(read_state_dict(path, key="model"))


def _vlm_config(request: "BuildRequest", weights: str, state: Dict[str, torch.Tensor]) -> HPSv3Config:
    """``request.config``, else the Qwen2-VL ``config.json`` beside the weights, else HPSv3's
    Qwen2-VL-7B; the vocabulary size is the checkpoint's (HPSv3 adds its reward token)."""
    config = request.config_of(HPSv3Config)
    if config is None:
        beside = os.path.join(os.path.dirname(os.path.abspath(weights)), HF_CONFIG)
        config = HPSv3Config()
        if os.path.isfile(beside):
            try:
                with open(beside, "r", encoding="utf-8") as handle:
                    vlm = json.load(handle)
            except (OSError, ValueError) as error:
                raise CheckpointError(f"cannot read Qwen2-VL config {beside}: {error}") from error
            if vlm.get("model_type") != "qwen2_vl":
                raise CheckpointError(f"{beside} is not a Qwen2-VL config (model_type {vlm.get('model_type')!r})")
            config = HPSv3Config(vlm=vlm)
    embeddings = state.get("model.embed_tokens.weight")
    if embeddings is not None and embeddings.shape[0] != text_setting(config.vlm, "vocab_size"):
        vlm = {**config.vlm, "vocab_size": int(embeddings.shape[0])}
        if "text_config" in vlm:
            vlm["text_config"] = {**vlm["text_config"], "vocab_size": int(embeddings.shape[0])}
        config = dataclasses.replace(config, vlm=vlm)
    return config


def build(request: "BuildRequest") -> ScorerParts:
    """Registry builder: HPSv3's state dict (``visual.*``, ``model.*``, ``rm_head.*``;
    ``lm_head`` unused) strictly, with Qwen2-VL's tokenizer file."""
    from ..tokenizers.qwen2_vl import HPSv3Tokenizer

    weights = request.files["weights"]
    state = read_hpsv3_checkpoint(weights)
    if request.saved:
        config = request.config_of(HPSv3Config)
        tokenizer_file = os.path.join(os.path.dirname(os.path.abspath(weights)), TOKENIZER_FILE)
    else:
        config = _vlm_config(request, weights, state)
        tokenizer_file = request.files["tokenizer"]
    tokenizer = HPSv3Tokenizer(tokenizer_file)
    network = HPSv3Score(config)
    # The towers keep the checkpoint's precision (bfloat16 for the released file, mapped, not
    # copied): load() casts them once to the precision asked for, the head to float32.
    embeddings = state.get("model.embed_tokens.weight")
    load_state_dict_strict(network, state, source=weights, ignore=request.entry.ignore_keys,
                           dtype=embeddings.dtype if embeddings is not None else None)
    network.rm_head.float()
    network.prefix_ids = tokenizer.prefix
    network.reward_token_id = tokenizer.reward_token_id
    if tokenizer.image_token_id != network.image_token_id:
        raise CheckpointError(
            f"{tokenizer_file}'s image token is {tokenizer.image_token_id}, the model's config says "
            f"{network.image_token_id}: the tokenizer and the weights are of different models"
        )
    factor = network.patch * network.merge
    if request.preprocess.size_factor != factor:
        raise CheckpointError(f"{weights}: images must be resized to multiples of {factor} for this "
                              f"model, the preprocessing says {request.preprocess.size_factor}")
    return ScorerParts(network, tokenizer, ImagePreprocessor(request.preprocess))
