"""A tiny Qwen2-VL for HPSv3 tests: a small byte-level BPE ``tokenizer.json`` with Qwen2-VL's
special tokens, and a Qwen2-VL ``config.json`` dict of a few narrow layers that uses them.

Imports only ``tokenizers`` (no imagereward, no transformers), so the reference side in
the hpsv3 environment (benchmarks/newmodels_side.py) builds the very same files.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Dict

# Qwen2-VL's special tokens, in the order of its vocabulary.
SPECIAL_TOKENS = [
    "<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|object_ref_start|>", "<|object_ref_end|>",
    "<|box_start|>", "<|box_end|>", "<|quad_start|>", "<|quad_end|>", "<|vision_start|>",
    "<|vision_end|>", "<|vision_pad|>", "<|image_pad|>", "<|video_pad|>",
]
# Qwen2's pre-tokenizer split (its tokenizer.json's Split pattern).
QWEN2_SPLIT = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)
TRAINING_TEXT = [
    "You are tasked with evaluating a generated image based on Visual Quality and Text Alignment",
    "Please provide the overall ratings of this image", "a red bicycle on a hill", "Textual prompt",
    "**Visual Quality:** Evaluate the overall visual quality of the image.", "un café à Zürich 東京",
]


def write_tokenizer(path: Path, vocab_size: int = 700) -> Dict[str, int]:
    """A byte-level BPE trained on a few lines, with Qwen2-VL's special tokens after it;
    returns the special tokens' ids."""
    from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers

    tokenizer = Tokenizer(models.BPE())
    tokenizer.normalizer = normalizers.NFC()
    tokenizer.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(QWEN2_SPLIT), behavior="isolated", invert=False),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
    ])
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False
    )
    tokenizer.train_from_iterator(TRAINING_TEXT * 4, trainer)
    tokenizer.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in SPECIAL_TOKENS])
    path.parent.mkdir(parents=True, exist_ok=True)
    tokenizer.save(str(path))
    return {token: tokenizer.token_to_id(token) for token in SPECIAL_TOKENS}


def tiny_vlm_config(ids: Dict[str, int], vocab_size: int) -> Dict[str, Any]:
    """A Qwen2-VL config.json dict: 2 language layers of width 64 (grouped-query attention,
    M-RoPE sections of its 16-wide heads), 2 vision blocks of width 32, Qwen2-VL's patch,
    temporal patch and merge sizes."""
    return {
        "model_type": "qwen2_vl", "hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2,
        "num_attention_heads": 4, "num_key_value_heads": 2, "hidden_act": "silu", "rms_norm_eps": 1e-6,
        "rope_theta": 1000000.0, "rope_scaling": {"type": "mrope", "mrope_section": [2, 3, 3]},
        "max_position_embeddings": 4096, "vocab_size": vocab_size, "tie_word_embeddings": False,
        "attention_dropout": 0.0, "use_sliding_window": False, "sliding_window": 4096, "max_window_layers": 2,
        "bos_token_id": ids["<|endoftext|>"], "eos_token_id": ids["<|im_end|>"],
        "pad_token_id": ids["<|endoftext|>"],
        "vision_start_token_id": ids["<|vision_start|>"], "vision_end_token_id": ids["<|vision_end|>"],
        "vision_token_id": ids["<|vision_pad|>"], "image_token_id": ids["<|image_pad|>"],
        "video_token_id": ids["<|video_pad|>"],
        "vision_config": {"depth": 2, "embed_dim": 32, "mlp_ratio": 2, "num_heads": 4, "in_chans": 3,
                          "hidden_size": 64, "patch_size": 14, "spatial_merge_size": 2, "spatial_patch_size": 14,
                          "temporal_patch_size": 2},
    }


def full_width_vlm_config(ids: Dict[str, int], vocab_size: int) -> Dict[str, Any]:
    """Qwen2-VL-7B's widths (language 3584 wide, 28 heads of 128 with 4 key/value heads,
    MLP 18944, M-RoPE sections 16/24/24; vision 1280 wide, 16 heads, merged to 3584) with
    one language layer and one vision block: a full-size layer stack of each tower."""
    config = tiny_vlm_config(ids, vocab_size)
    config.update({"hidden_size": 3584, "intermediate_size": 18944, "num_hidden_layers": 1,
                   "num_attention_heads": 28, "num_key_value_heads": 4, "max_window_layers": 1,
                   "rope_scaling": {"type": "mrope", "mrope_section": [16, 24, 24]}})
    config["vision_config"] = {**config["vision_config"], "depth": 1, "embed_dim": 1280, "mlp_ratio": 4,
                               "num_heads": 16, "hidden_size": 3584}
    return config


def write_config(path: Path, config: Dict[str, Any]) -> None:
    path.write_text(json.dumps(config, indent=2))
