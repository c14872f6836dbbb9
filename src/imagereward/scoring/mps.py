"""``MPS``: Multi-dimensional Preference Score (Zhang et al., CVPR 2024), the "overall" model.

A CLIP ViT-H-14 (Hugging Face ``CLIPModel`` weights, translated to our names) whose
projected image tokens attend, through the condition-aware cross-modeling module
(:mod:`imagereward.models.mps_cross`), to the projected prompt tokens that the
condition selects. The score is ``logit_scale.exp() * cos(prompt, image)`` of the
prompt's end-of-text feature and the cross-modeled class token, as MPS's scoring code
computes it (about 100 x a cosine).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Dict, List, Optional

import torch
import torch.nn.functional as F
from torch import nn

from ..checkpoints import load_state_dict_strict, read_state_dict, select_prefix, strip_prefix
from ..config import MPSConfig, openclip_vit_h_14
from ..errors import CheckpointError
from ..models.clip import CLIPModel, convert_hf_clip_state_dict, infer_hf_clip_config
from ..models.mps_cross import CrossModel
from ..module_pickle import read_module_tensors
from .network import RewardNetwork, ScorerParts, TextRows, repeated_row

if TYPE_CHECKING:  # pragma: no cover
    from ..factory import BuildRequest


class MPSScore(RewardNetwork):
    """The MPS network; ``condition_ids`` (the tokenised condition) is set by the builder."""

    FLOAT32_PARAMETERS = ("clip_model.logit_scale",)  # the temperature, as PickScore's

    def __init__(self, config: MPSConfig) -> None:
        super().__init__()
        self.config = config
        self.clip_model = CLIPModel(config.clip)
        self.cross_model = CrossModel(
            config.clip.embed_dim, config.cross_layers, config.cross_heads,
            config.cross_head_width, config.cross_ff_mult,
        )
        self.condition_ids: Optional[torch.Tensor] = None  # [1, L]; a plain tensor, not a buffer

    def encoders(self) -> List[nn.Module]:
        return [self.clip_model.visual, self.clip_model.transformer, self.cross_model]

    # -- the two towers, projected token by token ----------------------------------------
    def text_tokens(self, ids: torch.Tensor) -> torch.Tensor:
        """Projected features of every prompt position ``[N, L, D]``."""
        return self.clip_model.text_tokens(ids) @ self.clip_model.text_projection

    def image_tokens(self, pixels: torch.Tensor) -> torch.Tensor:
        """Projected class and patch features ``[B, 1 + P, D]`` (without ``ln_post``, as MPS)."""
        visual = self.clip_model.visual
        return visual.tokens(pixels) @ visual.proj

    def condition_mask(self, text: torch.Tensor) -> torch.Tensor:
        """0 for the prompt positions the condition selects, -inf for the others ``[N, L]``.

        A position's similarity is its highest dot product with a condition position,
        divided by the highest over the prompt; MPS's scoring code divides by the highest
        of its one-prompt batch, so each prompt here is divided by its own.
        """
        if self.condition_ids is None:
            raise RuntimeError("MPSScore.condition_ids is not set (the builder sets it)")
        condition = self.text_tokens(self.condition_ids.to(text.device)).float()
        similarity = torch.einsum("nld,cmd->nlm", text.float(), condition).amax(dim=-1)
        similarity = similarity / similarity.amax(dim=-1, keepdim=True)
        keep = similarity > self.config.condition_threshold
        return torch.zeros_like(similarity).masked_fill(~keep, float("-inf"))

    # -- RewardNetwork ---------------------------------------------------------------------
    def encode_text(self, tokens: torch.Tensor) -> TextRows:
        text = self.text_tokens(tokens)
        end = tokens.argmax(dim=-1)
        embeds = text[torch.arange(text.shape[0], device=text.device), end]
        return {
            "text_tokens": text,
            "text_embeds": F.normalize(embeds.float(), dim=-1),
            "mask": self.condition_mask(text),
        }

    def _scores(self, text: TextRows, image: torch.Tensor) -> torch.Tensor:
        crossed = self.cross_model(image, text["text_tokens"].to(image.dtype), text["mask"])
        image_embeds = F.normalize(crossed[:, 0, :].float(), dim=-1)
        scale = self.clip_model.logit_scale.float().exp()
        return scale * (text["text_embeds"] * image_embeds).sum(dim=-1)

    def score_rows(self, text: TextRows, pixels: torch.Tensor) -> torch.Tensor:
        return self._scores(text, self.image_tokens(pixels))

    def image_features(self, pixels: torch.Tensor) -> torch.Tensor:
        return self.image_tokens(pixels)

    def score_grid(self, text: TextRows, features: torch.Tensor) -> torch.Tensor:
        """Every prompt with every image: the cross model runs once per pair."""
        prompts = text["text_embeds"].shape[0]
        count = features.shape[0]
        return torch.stack([self._scores(repeated_row(text, row, count), features) for row in range(prompts)])


# HF buffers of transformers < 4.31 that no computation reads.
_HF_POSITION_IDS = r"clip_model\.(text|vision)_model\.embeddings\.position_ids"


def read_mps_checkpoint(path: str) -> Dict[str, torch.Tensor]:
    """MPS's tensors from its released whole-model pickle (read without running it), a
    plain state dict of it, or a safetensors file of the same keys."""
    if path.endswith(".safetensors"):
        return strip_prefix(read_state_dict(path))
    return strip_prefix(read_module_tensors(path))


def _with_condition(parts: ScorerParts) -> ScorerParts:
    network = parts.network
    assert isinstance(network, MPSScore) and parts.tokenizer is not None
    network.condition_ids = parts.tokenizer([network.config.condition])
    return parts


def build(request: "BuildRequest") -> ScorerParts:
    """Registry builder: the MPS checkpoint (``model.*`` Hugging Face CLIP names and
    ``cross_model.*``), strictly; the CLIP sizes from ``request.config`` or the weights
    (with ViT-H-14's head widths and GELU)."""
    if request.saved:
        return _with_condition(request.build_saved(MPSScore))
    path = request.files["weights"]
    state = read_mps_checkpoint(path)
    config = request.config_of(MPSConfig)
    if config is None:
        reference = openclip_vit_h_14()
        clip = infer_hf_clip_config(
            select_prefix(state, "model."), path, vision_head_width=reference.vision_head_width,
            text_head_width=reference.text_head_width, act=reference.act,
        )
        config = MPSConfig(clip=clip)
    with torch.device("meta"):
        network = MPSScore(config)
    clip, names = convert_hf_clip_state_dict(
        select_prefix(state, "model."), network.clip_model.state_dict(), path
    )
    combined: Dict[str, Any] = {f"clip_model.{k}": v for k, v in clip.items()}
    combined.update({f"cross_model.{k}": v for k, v in select_prefix(state, "cross_model.").items()})
    combined.update({k: v for k, v in state.items() if not k.startswith(("model.", "cross_model."))})
    if not any(k.startswith("cross_model.") for k in combined):
        raise CheckpointError(f"{path} has no cross_model.* tensors: it is not an MPS checkpoint")
    key_names = {f"clip_model.{k}": f"model.{v}" for k, v in names.items()}
    load_state_dict_strict(
        network, combined, source=path, ignore=(*request.entry.ignore_keys, _HF_POSITION_IDS),
        key_names=key_names,
    )
    return _with_condition(request.parts(network, config.context_length, config.image_size))
