"""Seeded checkpoints for the golden tests, in the original files' formats.

Pure torch (imports neither ``imagereward`` nor ``ImageReward``), so that
``make_golden.py`` in the reference environment and the test suite build the
same tensors bit for bit from a small configuration and a seed:

- ``imagereward_checkpoint``: ``ImageReward.pt``, a plain state dict with the keys
  the original carries but does not use (``blip.vision_proj``, ``blip.text_proj``,
  ``position_ids``);
- ``blip_checkpoint``: ``model_large.pth``, ``{"model": ...}`` with BLIP's
  pretraining extras (momentum encoders, text decoder, ITM head, queues);
- ``clip_checkpoint``: an OpenAI CLIP ViT state dict in float16, as OpenAI ships
  it, with the archive's ``input_resolution``/``context_length``/``vocab_size``;
- ``aesthetic_checkpoint``: the LAION aesthetic MLP state dict;
- ``hf_clip_checkpoint``: a Hugging Face ``CLIPModel`` state dict (PickScore's layout),
  written with its ``config.json`` (:func:`hf_clip_config`);
- ``openclip_checkpoint``: ``{"state_dict": ...}`` of an OpenCLIP ViT-H-14-like model,
  as hpsv2 saves HPSv2 and HPSv2.1.

Every tensor has its own ``torch.Generator``, seeded from the base seed and its
key, so a value never depends on the other keys. Values are integer draws
(``torch.randint``, a serial kernel on the CPU) turned into uniform values of
the wanted standard deviation by one float multiplication, so no
vectorised transcendental function (``randn``'s Box-Muller) can make them differ
between CPUs or torch versions. :func:`tensor_digest` pins the result; the golden
files store it.
"""

from __future__ import annotations

import hashlib
import math
from typing import Dict, Mapping, Optional, Tuple

import torch

Shape = Tuple[int, ...]
StateDict = Dict[str, torch.Tensor]

HEAD_DIMS = (1024, 128, 64, 16)  # the original reward/aesthetic MLP's hidden sizes
BLIP_EMBED_DIM = 256  # BLIP's contrastive projection width
LAYER_NORM_GAIN = 0.1  # LayerNorm weights are 1 +- this (std), biases +- this
SMALL_STD = 0.02  # biases and embeddings

# Tiny sizes. Where the original code hard-codes a size (224 px, the BERT
# vocabulary, the head's hidden sizes, CLIP's 64-wide heads and 77-token context,
# the aesthetic MLP's 768 inputs), the original size is kept.
TINY_BLIP = {
    "vision": {"image_size": 224, "patch_size": 16, "width": 32, "depth": 2, "heads": 2,
               "mlp_ratio": 4},
    "text": {"vocab_size": 30524, "hidden_size": 32, "num_layers": 2, "num_heads": 2,
             "intermediate_size": 64, "max_position_embeddings": 512},
}
# OpenCLIP ViT-H-14's peculiarities at tiny sizes: 80-wide image heads, 64-wide text heads.
TINY_VIT_H = {
    "embed_dim": 64, "image_size": 224, "patch_size": 32, "vision_width": 160,
    "vision_layers": 2, "vision_head_width": 80, "context_length": 77, "vocab_size": 49408,
    "text_width": 128, "text_layers": 2, "text_heads": 2,
}
TINY_CLIP = {
    "embed_dim": 768, "image_size": 224, "patch_size": 16, "vision_width": 128,
    "vision_layers": 2, "context_length": 77, "vocab_size": 49408, "text_width": 128,
    "text_layers": 2,
}


# -- values ---------------------------------------------------------------------------
def _key_seed(seed: int, key: str) -> int:
    digest = hashlib.sha256(f"{seed}/{key}".encode("utf-8")).digest()
    return int.from_bytes(digest[:8], "little") & (2**63 - 1)


def uniform(key: str, shape: Shape, std: float, seed: int) -> torch.Tensor:
    """Float32 values uniform in ``[-std*sqrt(3), std*sqrt(3))`` (standard deviation ``std``)."""
    generator = torch.Generator().manual_seed(_key_seed(seed, key))
    steps = torch.randint(-(2**15), 2**15, shape, generator=generator, dtype=torch.int64)
    return steps.to(torch.float32) * (std * math.sqrt(3.0) / 2**15)


HF_NORMS = ("LayerNorm", "final_layer_norm", "pre_layrnorm", "post_layernorm", "input_layernorm",
            "post_attention_layernorm")


def _is_norm(key: str) -> bool:
    module = key.rsplit(".", 1)[0].rsplit(".", 1)[-1]
    return module.startswith(("norm", "ln_", "layer_norm")) or module in HF_NORMS


EMBEDDINGS = (
    "word_embeddings.weight", "position_embeddings.weight", "token_embedding.weight",
    "positional_embedding", "pos_embed", "cls_token", "class_embedding", "position_embedding.weight",
)
# Used as ``x @ W`` (input features first), unlike ``nn.Linear`` weights.
RIGHT_MULTIPLIED = ("visual.proj", "text_projection")


def seeded_tensor(key: str, shape: Shape, seed: int) -> torch.Tensor:
    """The value of one float parameter, scaled by the kind of parameter its key names."""
    if _is_norm(key):
        values = uniform(key, shape, LAYER_NORM_GAIN, seed)
        return values + 1.0 if key.endswith("weight") else values
    if key.endswith(EMBEDDINGS) or len(shape) < 2:
        return uniform(key, shape, SMALL_STD, seed)
    fan_in = shape[0] if key.endswith(RIGHT_MULTIPLIED) else math.prod(shape[1:])
    return uniform(key, shape, fan_in ** -0.5, seed)


def fill(
    shapes: Mapping[str, Shape], seed: int, gains: Optional[Mapping[str, float]] = None
) -> StateDict:
    """Seeded float32 tensors for ``shapes``; keys in ``gains`` are multiplied by their gain."""
    gains = gains or {}
    state = {}
    for key in sorted(shapes):
        value = seeded_tensor(key, shapes[key], seed)
        state[key] = value * gains[key] if key in gains else value
    return state


def tensor_digest(state: Mapping[str, torch.Tensor]) -> str:
    """sha256 over every tensor's key, dtype, shape and bytes, in sorted key order."""
    digest = hashlib.sha256()
    for key in sorted(state):
        tensor = state[key].detach().cpu().contiguous()
        digest.update(f"{key}|{tensor.dtype}|{tuple(tensor.shape)}|".encode("utf-8"))
        digest.update(tensor.numpy().tobytes())
    return digest.hexdigest()


# -- layouts --------------------------------------------------------------------------
def _linear(prefix: str, out_features: int, in_features: int) -> Dict[str, Shape]:
    return {f"{prefix}.weight": (out_features, in_features), f"{prefix}.bias": (out_features,)}


def _norm(prefix: str, width: int) -> Dict[str, Shape]:
    return {f"{prefix}.weight": (width,), f"{prefix}.bias": (width,)}


def vit_shapes(prefix: str, vision: Mapping[str, int]) -> Dict[str, Shape]:
    """BLIP's timm-style ViT (``visual_encoder``)."""
    width, patch = vision["width"], vision["patch_size"]
    tokens = (vision["image_size"] // patch) ** 2 + 1
    hidden = int(width * vision["mlp_ratio"])
    shapes: Dict[str, Shape] = {
        f"{prefix}.cls_token": (1, 1, width),
        f"{prefix}.pos_embed": (1, tokens, width),
        f"{prefix}.patch_embed.proj.weight": (width, 3, patch, patch),
        f"{prefix}.patch_embed.proj.bias": (width,),
        **_norm(f"{prefix}.norm", width),
    }
    for i in range(vision["depth"]):
        block = f"{prefix}.blocks.{i}"
        shapes.update(_norm(f"{block}.norm1", width))
        shapes.update(_linear(f"{block}.attn.qkv", 3 * width, width))
        shapes.update(_linear(f"{block}.attn.proj", width, width))
        shapes.update(_norm(f"{block}.norm2", width))
        shapes.update(_linear(f"{block}.mlp.fc1", hidden, width))
        shapes.update(_linear(f"{block}.mlp.fc2", width, hidden))
    return shapes


def bert_shapes(prefix: str, text: Mapping[str, int], encoder_width: int) -> Dict[str, Shape]:
    """BLIP's "MED" BERT with cross-attention in every layer, no token types, no pooler.

    ``embeddings.position_ids`` is listed too; :func:`with_position_ids` fills it.
    """
    width, inner = text["hidden_size"], text["intermediate_size"]
    shapes: Dict[str, Shape] = {
        f"{prefix}.embeddings.position_ids": (1, text["max_position_embeddings"]),
        f"{prefix}.embeddings.word_embeddings.weight": (text["vocab_size"], width),
        f"{prefix}.embeddings.position_embeddings.weight": (text["max_position_embeddings"], width),
        **_norm(f"{prefix}.embeddings.LayerNorm", width),
    }
    for i in range(text["num_layers"]):
        layer = f"{prefix}.encoder.layer.{i}"
        for part, source in (("attention", width), ("crossattention", encoder_width)):
            shapes.update(_linear(f"{layer}.{part}.self.query", width, width))
            shapes.update(_linear(f"{layer}.{part}.self.key", width, source))
            shapes.update(_linear(f"{layer}.{part}.self.value", width, source))
            shapes.update(_linear(f"{layer}.{part}.output.dense", width, width))
            shapes.update(_norm(f"{layer}.{part}.output.LayerNorm", width))
        shapes.update(_linear(f"{layer}.intermediate.dense", inner, width))
        shapes.update(_linear(f"{layer}.output.dense", width, inner))
        shapes.update(_norm(f"{layer}.output.LayerNorm", width))
    return shapes


def head_shapes(
    prefix: str, input_dim: int, hidden_dims: Tuple[int, ...] = HEAD_DIMS
) -> Dict[str, Shape]:
    """The activation-free MLP: ``layers.{0,2,4,6,7}`` (dropouts between all but the last two)."""
    shapes: Dict[str, Shape] = {}
    width = input_dim
    for position, hidden in enumerate((*hidden_dims, 1)):
        index = min(2 * position, 2 * len(hidden_dims) - 1)
        shapes.update(_linear(f"{prefix}layers.{index}", hidden, width))
        width = hidden
    return shapes


def _last_head_weight(prefix: str, hidden_dims: Tuple[int, ...] = HEAD_DIMS) -> str:
    return f"{prefix}layers.{2 * len(hidden_dims) - 1}.weight"


def with_position_ids(state: StateDict) -> StateDict:
    """BERT's persistent ``position_ids`` buffers: ``arange`` as int64 ``[1, max_positions]``."""
    for key, value in state.items():
        if key.endswith("embeddings.position_ids"):
            state[key] = torch.arange(value.shape[1], dtype=torch.int64)[None]
    return state


def clip_shapes(clip: Mapping[str, int]) -> Dict[str, Shape]:
    """OpenAI CLIP with a ViT image tower (``ViT-*.pt`` names)."""
    vision, text = clip["vision_width"], clip["text_width"]
    patch, embed = clip["patch_size"], clip["embed_dim"]
    tokens = (clip["image_size"] // patch) ** 2 + 1
    shapes: Dict[str, Shape] = {
        "positional_embedding": (clip["context_length"], text),
        "text_projection": (text, embed),
        "logit_scale": (),
        "token_embedding.weight": (clip["vocab_size"], text),
        **_norm("ln_final", text),
        "visual.class_embedding": (vision,),
        "visual.positional_embedding": (tokens, vision),
        "visual.conv1.weight": (vision, 3, patch, patch),
        **_norm("visual.ln_pre", vision),
        **_norm("visual.ln_post", vision),
        "visual.proj": (vision, embed),
    }
    for tower, width, layers in (
        ("transformer", text, clip["text_layers"]),
        ("visual.transformer", vision, clip["vision_layers"]),
    ):
        for i in range(layers):
            block = f"{tower}.resblocks.{i}"
            shapes[f"{block}.attn.in_proj_weight"] = (3 * width, width)
            shapes[f"{block}.attn.in_proj_bias"] = (3 * width,)
            shapes.update(_linear(f"{block}.attn.out_proj", width, width))
            shapes.update(_norm(f"{block}.ln_1", width))
            shapes.update(_linear(f"{block}.mlp.c_fc", 4 * width, width))
            shapes.update(_linear(f"{block}.mlp.c_proj", width, 4 * width))
            shapes.update(_norm(f"{block}.ln_2", width))
    return shapes


def hf_clip_shapes(clip: Mapping[str, int]) -> Dict[str, Shape]:
    """A Hugging Face ``CLIPModel`` (``transformers`` names; PickScore's files)."""
    vision, text = clip["vision_width"], clip["text_width"]
    patch, embed = clip["patch_size"], clip["embed_dim"]
    tokens = (clip["image_size"] // patch) ** 2 + 1
    shapes: Dict[str, Shape] = {
        "text_model.embeddings.token_embedding.weight": (clip["vocab_size"], text),
        "text_model.embeddings.position_embedding.weight": (clip["context_length"], text),
        **_norm("text_model.final_layer_norm", text),
        "vision_model.embeddings.class_embedding": (vision,),
        "vision_model.embeddings.patch_embedding.weight": (vision, 3, patch, patch),
        "vision_model.embeddings.position_embedding.weight": (tokens, vision),
        **_norm("vision_model.pre_layrnorm", vision),
        **_norm("vision_model.post_layernorm", vision),
        "visual_projection.weight": (embed, vision),
        "text_projection.weight": (embed, text),
    }
    for tower, width, layers in (
        ("text_model", text, clip["text_layers"]), ("vision_model", vision, clip["vision_layers"]),
    ):
        for i in range(layers):
            block = f"{tower}.encoder.layers.{i}"
            for projection in ("q_proj", "k_proj", "v_proj", "out_proj"):
                shapes.update(_linear(f"{block}.self_attn.{projection}", width, width))
            shapes.update(_norm(f"{block}.layer_norm1", width))
            shapes.update(_linear(f"{block}.mlp.fc1", 4 * width, width))
            shapes.update(_linear(f"{block}.mlp.fc2", width, 4 * width))
            shapes.update(_norm(f"{block}.layer_norm2", width))
    return shapes


def hf_clip_config(clip: Mapping[str, int]) -> Dict[str, object]:
    """The ``config.json`` of :func:`hf_clip_checkpoint` (exact GELU, as ViT-H-14)."""
    vision, text = clip["vision_width"], clip["text_width"]
    return {
        "model_type": "clip", "projection_dim": clip["embed_dim"],
        "text_config": {"hidden_size": text, "intermediate_size": 4 * text,
                        "num_hidden_layers": clip["text_layers"], "num_attention_heads": clip["text_heads"],
                        "max_position_embeddings": clip["context_length"], "vocab_size": clip["vocab_size"],
                        "hidden_act": "gelu"},
        "vision_config": {"hidden_size": vision, "intermediate_size": 4 * vision,
                          "num_hidden_layers": clip["vision_layers"],
                          "num_attention_heads": vision // clip["vision_head_width"],
                          "image_size": clip["image_size"], "patch_size": clip["patch_size"],
                          "hidden_act": "gelu"},
    }


def openclip_config(clip: Mapping[str, int]) -> Dict[str, object]:
    """The OpenCLIP model config (``open_clip``'s JSON layout) of :func:`openclip_checkpoint`."""
    return {
        "embed_dim": clip["embed_dim"],
        "vision_cfg": {"image_size": clip["image_size"], "layers": clip["vision_layers"],
                       "width": clip["vision_width"], "head_width": clip["vision_head_width"],
                       "patch_size": clip["patch_size"]},
        "text_cfg": {"context_length": clip["context_length"], "vocab_size": clip["vocab_size"],
                     "width": clip["text_width"], "heads": clip["text_heads"], "layers": clip["text_layers"]},
    }


# -- checkpoints ----------------------------------------------------------------------
def imagereward_checkpoint(blip: Mapping, seed: int, head_gain: float) -> StateDict:
    """The content of ``ImageReward.pt`` (all 625 key patterns, tiny sizes)."""
    vision, text = blip["vision"], blip["text"]
    shapes = {
        **vit_shapes("blip.visual_encoder", vision),
        **bert_shapes("blip.text_encoder", text, encoder_width=vision["width"]),
        **_linear("blip.vision_proj", BLIP_EMBED_DIM, vision["width"]),
        **_linear("blip.text_proj", BLIP_EMBED_DIM, text["hidden_size"]),
        **head_shapes("mlp.", text["hidden_size"]),
    }
    return with_position_ids(fill(shapes, seed, {_last_head_weight("mlp."): head_gain}))


def blip_checkpoint(blip: Mapping, seed: int, queue_size: int = 8) -> Dict[str, StateDict]:
    """``model_large.pth``: ``{"model": ...}`` with the pretraining model's unused parts.

    The queues are ``[256, queue_size]`` rather than ``[256, 57600]``: they are never read.
    """
    vision, text = blip["vision"], blip["text"]
    width, vocab = text["hidden_size"], text["vocab_size"]
    encoders = {
        **vit_shapes("visual_encoder", vision),
        **bert_shapes("text_encoder", text, encoder_width=vision["width"]),
        **_linear("vision_proj", BLIP_EMBED_DIM, vision["width"]),
        **_linear("text_proj", BLIP_EMBED_DIM, width),
    }
    momentum = {
        key.replace("visual_encoder", "visual_encoder_m").replace("text_encoder", "text_encoder_m")
        .replace("vision_proj", "vision_proj_m").replace("text_proj", "text_proj_m"): shape
        for key, shape in encoders.items()
    }
    decoder = {
        **bert_shapes("text_decoder.bert", text, encoder_width=vision["width"]),
        **_linear("text_decoder.cls.predictions.transform.dense", width, width),
        **_norm("text_decoder.cls.predictions.transform.LayerNorm", width),
        "text_decoder.cls.predictions.decoder.weight": (vocab, width),
        "text_decoder.cls.predictions.decoder.bias": (vocab,),
        "text_decoder.cls.predictions.bias": (vocab,),
    }
    extras = {
        **_linear("itm_head", 2, width),
        "image_queue": (BLIP_EMBED_DIM, queue_size),
        "text_queue": (BLIP_EMBED_DIM, queue_size),
    }
    state = with_position_ids(fill({**encoders, **momentum, **decoder, **extras}, seed))
    state["temp"] = torch.tensor(0.07)
    state["queue_ptr"] = torch.zeros(1, dtype=torch.int64)
    return {"model": state}


def clip_checkpoint(clip: Mapping, seed: int) -> StateDict:
    """An OpenAI CLIP state dict: float16 weights and the archive's three int entries."""
    state = {key: value.half() for key, value in fill(clip_shapes(clip), seed).items()}
    state["logit_scale"] = torch.tensor(math.log(1 / 0.07), dtype=torch.float16)
    state["input_resolution"] = torch.tensor(clip["image_size"])
    state["context_length"] = torch.tensor(clip["context_length"])
    state["vocab_size"] = torch.tensor(clip["vocab_size"])
    return state


def aesthetic_checkpoint(embed_dim: int, seed: int, head_gain: float) -> StateDict:
    """The aesthetic predictor's ``layers.*`` state dict for ``embed_dim`` CLIP features."""
    shapes = head_shapes("", embed_dim)
    return fill(shapes, seed, {_last_head_weight(""): head_gain})


def hf_clip_checkpoint(clip: Mapping, seed: int) -> StateDict:
    """PickScore's ``model.safetensors``: float32, the temperature at ln 100 (PickScore's clamp)."""
    state = fill(hf_clip_shapes(clip), seed)
    state["logit_scale"] = torch.tensor(math.log(100.0))
    return state


def openclip_checkpoint(clip: Mapping, seed: int) -> Dict[str, StateDict]:
    """``{"state_dict": ...}`` of an OpenCLIP model with OpenAI CLIP's names, float32."""
    state = fill(clip_shapes(clip), seed)
    state["logit_scale"] = torch.tensor(math.log(1 / 0.07))
    return {"state_dict": state}


# MPS at tiny sizes: ViT-H-14's peculiarities, and a cross-modeling module of the width of
# the projection. ``gains`` spread the prompt tokens' features so that MPS's condition (a
# 0.3 similarity threshold, fixed in its scoring code) drops a token of some prompts;
# random towers make the tokens much alike, so it keeps nearly all of them.
TINY_MPS = {
    "clip": TINY_VIT_H, "cross": {"layers": 2, "heads": 4, "head_dim": 16, "ff_mult": 2},
    "gains": {"model.text_model.embeddings.token_embedding.weight": 40.0,
              "model.text_model.final_layer_norm.bias": 0.0},
}


def mps_cross_shapes(width: int, cross: Mapping[str, int]) -> Dict[str, Shape]:
    """MPS's ``cross_model`` (its ``Cross_model`` class's names); the LayerNorms' bias
    buffers and rotary frequencies are set by :func:`mps_checkpoint`."""
    heads, head, ff = cross["heads"], cross["head_dim"], cross["ff_mult"] * width
    shapes: Dict[str, Shape] = {}
    for i in range(cross["layers"]):
        cross_attn, block = f"cross_model.layers.{i}.0.fn", f"cross_model.layers.{i}.1.fn"
        shapes.update({
            f"{cross_attn}.norm.weight": (width,), f"{cross_attn}.to_q.weight": (heads * head, width),
            f"{cross_attn}.to_kv.weight": (2 * head, width), f"{cross_attn}.to_out.weight": (width, heads * head),
            f"{cross_attn}.ff.0.weight": (2 * ff, width), f"{cross_attn}.ff.2.weight": (width, ff),
            f"{block}.norm.weight": (width,),
            f"{block}.fused_attn_ff_proj.weight": (heads * head + 2 * head + 2 * ff, width),
            f"{block}.attn_out.weight": (width, heads * head), f"{block}.ff_out.1.weight": (width, ff),
        })
    return shapes


def mps_checkpoint(config: Mapping, seed: int) -> StateDict:
    """MPS's model as its ``state_dict``: ``model.*`` a Hugging Face ``CLIPModel``, the
    temperature at ln 100, and ``cross_model.*``, float32."""
    clip, cross = config["clip"], config["cross"]
    shapes = {f"model.{k}": v for k, v in hf_clip_shapes(clip).items()}
    shapes.update(mps_cross_shapes(clip["embed_dim"], cross))
    state = fill(shapes, seed, config.get("gains"))
    state["model.logit_scale"] = torch.tensor(math.log(100.0))
    head = cross["head_dim"]
    inv_freq = 1.0 / (10000 ** (torch.arange(0, head, 2).float() / head))
    for i in range(cross["layers"]):
        state[f"cross_model.layers.{i}.0.fn.norm.bias"] = torch.zeros(clip["embed_dim"])
        state[f"cross_model.layers.{i}.1.fn.norm.bias"] = torch.zeros(clip["embed_dim"])
        state[f"cross_model.layers.{i}.1.fn.rotary_emb.inv_freq"] = inv_freq.clone()
    return state


def qwen2_vl_reward_shapes(vlm: Mapping, head_widths: Tuple[int, int] = (1024, 16)) -> Dict[str, Shape]:
    """HPSv3's ``Qwen2VLRewardModelBT`` (transformers 4.45's Qwen2-VL names): vision tower,
    language model, ``lm_head`` and the reward head."""
    vision = vlm["vision_config"]
    embed, depth, hidden = vision["embed_dim"], vision["depth"], vlm["hidden_size"]
    mlp, patch, frames = embed * vision["mlp_ratio"], vision["patch_size"], vision["temporal_patch_size"]
    merged = embed * vision["spatial_merge_size"] ** 2
    shapes: Dict[str, Shape] = {"visual.patch_embed.proj.weight": (embed, 3, frames, patch, patch)}
    for i in range(depth):
        block = f"visual.blocks.{i}"
        shapes.update({**_norm(f"{block}.norm1", embed), **_norm(f"{block}.norm2", embed),
                       **_linear(f"{block}.attn.qkv", 3 * embed, embed), **_linear(f"{block}.attn.proj", embed, embed),
                       **_linear(f"{block}.mlp.fc1", mlp, embed), **_linear(f"{block}.mlp.fc2", embed, mlp)})
    shapes.update({**_norm("visual.merger.ln_q", embed), **_linear("visual.merger.mlp.0", merged, merged),
                   **_linear("visual.merger.mlp.2", hidden, merged)})
    heads, kv = vlm["num_attention_heads"], vlm["num_key_value_heads"]
    head, inner = hidden // heads, vlm["intermediate_size"]
    shapes["model.embed_tokens.weight"] = (vlm["vocab_size"], hidden)
    for i in range(vlm["num_hidden_layers"]):
        layer = f"model.layers.{i}"
        shapes.update({**_linear(f"{layer}.self_attn.q_proj", heads * head, hidden),
                       **_linear(f"{layer}.self_attn.k_proj", kv * head, hidden),
                       **_linear(f"{layer}.self_attn.v_proj", kv * head, hidden),
                       f"{layer}.self_attn.o_proj.weight": (hidden, heads * head),
                       f"{layer}.mlp.gate_proj.weight": (inner, hidden), f"{layer}.mlp.up_proj.weight": (inner, hidden),
                       f"{layer}.mlp.down_proj.weight": (hidden, inner),
                       f"{layer}.input_layernorm.weight": (hidden,),
                       f"{layer}.post_attention_layernorm.weight": (hidden,)})
    shapes.update({"model.norm.weight": (hidden,), "lm_head.weight": (vlm["vocab_size"], hidden),
                   **_linear("rm_head.0", head_widths[0], hidden), **_linear("rm_head.3", head_widths[1], head_widths[0]),
                   **_linear("rm_head.5", 2, head_widths[1])})
    return shapes


def hpsv3_checkpoint(config: Mapping, seed: int) -> StateDict:
    """HPSv3's ``HPSv3.safetensors`` of a tiny Qwen2-VL (``config["vlm"]``), float32; the
    reward head's last layer scaled by ``head_gain`` so that rewards spread."""
    return fill(qwen2_vl_reward_shapes(config["vlm"]), seed, {"rm_head.5.weight": config["head_gain"]})


def file_state(checkpoint: Mapping) -> Mapping[str, torch.Tensor]:
    """The tensors a digest covers: the ``"model"`` or ``"state_dict"`` entry of a wrapped checkpoint."""
    for entry in ("model", "state_dict"):
        if entry in checkpoint:
            return checkpoint[entry]
    return checkpoint


def build(scorer: str, config: Mapping) -> Dict[str, Mapping]:
    """The checkpoints a scorer loads, by role (``checkpoint``, ``clip_checkpoint``).

    ``config`` is a golden file's ``config`` entry: the sizes, the seed and the head gain.
    """
    seed = config["seed"]
    if scorer == "ImageReward":
        return {"checkpoint": imagereward_checkpoint(config["blip"], seed, config["head_gain"])}
    if scorer == "BLIP":
        return {"checkpoint": blip_checkpoint(config["blip"], seed)}
    if scorer == "CLIP":
        return {"checkpoint": clip_checkpoint(config["clip"], seed)}
    if scorer == "Aesthetic":
        return {
            "checkpoint": aesthetic_checkpoint(config["clip"]["embed_dim"], seed, config["head_gain"]),
            "clip_checkpoint": clip_checkpoint(config["clip"], seed + 1),
        }
    if scorer == "PickScore":
        return {"checkpoint": hf_clip_checkpoint(config["clip"], seed)}
    if scorer in ("HPSv2", "HPSv2.1"):
        return {"checkpoint": openclip_checkpoint(config["clip"], seed)}
    if scorer == "MPS":
        return {"checkpoint": mps_checkpoint(config["mps"], seed)}
    if scorer == "HPSv3":
        return {"checkpoint": hpsv3_checkpoint(config, seed)}
    raise ValueError(f"no golden checkpoints for {scorer!r}")

