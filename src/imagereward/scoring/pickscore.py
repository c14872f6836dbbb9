"""``PickScore``: CLIP ViT-H-14 fine-tuned on Pick-a-Pic preferences (Kirstain et al., 2023)."""

from __future__ import annotations

import json
import os
from typing import TYPE_CHECKING, Any, Dict

import torch

from ..checkpoints import CheckpointError, load_state_dict_strict, read_state_dict, strip_prefix
from ..config import CLIPConfig, openclip_vit_h_14
from ..models.clip import clip_config_from_hf, convert_hf_clip_state_dict
from .clip_score import CLIPScore
from .network import ScorerParts

if TYPE_CHECKING:  # pragma: no cover
    from ..factory import BuildRequest

HF_CONFIG = "config.json"


class PickScore(CLIPScore):
    """``logit_scale.exp() * cos(text, image)``, as PickScore's authors compute it.

    The weights are a Hugging Face ``CLIPModel`` translated to our CLIP names;
    prompts go through Hugging Face's fast CLIP tokenizer rules and images through
    ``CLIPImageProcessor``'s (see ``docs/preference-models.md``). Scores are about
    100 times a cosine.
    """

    # The temperature stays float32 like every head here (ln 100 in bfloat16 would scale
    # scores by 98.9).
    FLOAT32_PARAMETERS = ("clip_model.logit_scale",)

    def similarity_scale(self) -> torch.Tensor:
        return self.clip_model.logit_scale.float().exp()


def read_hf_config(path: str) -> CLIPConfig:
    """Our :class:`CLIPConfig` from a Hugging Face ``CLIPModel`` ``config.json``."""
    try:
        with open(path, "r", encoding="utf-8") as handle:
            raw: Dict[str, Any] = json.load(handle)
    except (OSError, ValueError) as error:
        raise CheckpointError(f"cannot read Hugging Face config {path}: {error}") from error
    if raw.get("model_type", "clip") != "clip":
        raise CheckpointError(f"{path} is not a CLIP config (model_type {raw.get('model_type')!r})")
    return clip_config_from_hf(raw, path)


def build(request: "BuildRequest") -> ScorerParts:
    """Registry builder. Sizes: ``request.config``, else the ``config.json`` beside the
    weights (a local Hugging Face folder), else PickScore's ViT-H-14."""
    if request.saved:
        return request.build_saved(PickScore)
    path = request.files["weights"]
    config = request.config_of(CLIPConfig)
    if config is None:
        beside = os.path.join(os.path.dirname(os.path.abspath(path)), HF_CONFIG)
        config = read_hf_config(beside) if os.path.isfile(beside) else openclip_vit_h_14()
    state = strip_prefix(read_state_dict(path))
    with torch.device("meta"):
        network = PickScore(config)
    converted, names = convert_hf_clip_state_dict(state, network.clip_model.state_dict(), path)
    load_state_dict_strict(
        network.clip_model, converted, source=path, ignore=request.entry.ignore_keys, key_names=names
    )
    return request.parts(network, config.context_length, config.image_size)
