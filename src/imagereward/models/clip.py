"""OpenAI CLIP with a ViT image tower, parameter names as in OpenAI's checkpoints.

Both towers are pre-norm transformers with QuickGELU MLPs; LayerNorm runs in
float32 whatever the weights' precision, as in OpenAI's code. The text tower is
causal and reads its feature at the end-of-text token (the highest id); the
image feature is the normalised class token times ``visual.proj``.
"""

from __future__ import annotations

import re
from typing import Mapping

import torch
import torch.nn.functional as F
from torch import nn

from ..checkpoints import CheckpointError
from ..config import CLIPConfig
from .layers import attention, merge_heads

HEAD_DIM = 64  # OpenAI's ViT models use 64-wide heads in both towers


class LayerNormFP32(nn.LayerNorm):
    """LayerNorm computed in float32 and cast back to the input's dtype."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.layer_norm(
            x.float(), self.normalized_shape, self.weight.float(), self.bias.float(), self.eps
        )
        return out.to(x.dtype)


class QuickGELU(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * torch.sigmoid(1.702 * x)


class SelfAttention(nn.Module):
    """Multi-head self-attention with ``nn.MultiheadAttention``'s parameter names."""

    def __init__(self, width: int, heads: int) -> None:
        super().__init__()
        if width % heads:
            raise ValueError(f"width {width} is not divisible by {heads} heads")
        self.heads = heads
        self.in_proj_weight = nn.Parameter(torch.empty(3 * width, width))
        self.in_proj_bias = nn.Parameter(torch.zeros(3 * width))
        self.out_proj = nn.Linear(width, width)
        nn.init.xavier_uniform_(self.in_proj_weight)

    def forward(self, x: torch.Tensor, causal: bool) -> torch.Tensor:
        batch, length, width = x.shape
        qkv = F.linear(x, self.in_proj_weight, self.in_proj_bias)
        qkv = qkv.view(batch, length, 3, self.heads, width // self.heads)
        query, key, value = qkv.permute(2, 0, 3, 1, 4).unbind(0)
        return self.out_proj(merge_heads(attention(query, key, value, causal=causal)))


class FeedForward(nn.Module):
    def __init__(self, width: int) -> None:
        super().__init__()
        self.c_fc = nn.Linear(width, width * 4)
        self.gelu = QuickGELU()
        self.c_proj = nn.Linear(width * 4, width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.c_proj(self.gelu(self.c_fc(x)))


class ResidualAttentionBlock(nn.Module):
    def __init__(self, width: int, heads: int, eps: float) -> None:
        super().__init__()
        self.attn = SelfAttention(width, heads)
        self.ln_1 = LayerNormFP32(width, eps=eps)
        self.mlp = FeedForward(width)
        self.ln_2 = LayerNormFP32(width, eps=eps)

    def forward(self, x: torch.Tensor, causal: bool) -> torch.Tensor:
        x = x + self.attn(self.ln_1(x), causal)
        return x + self.mlp(self.ln_2(x))


class Transformer(nn.Module):
    """A stack of residual blocks on ``[B, L, width]`` (batch first)."""

    def __init__(self, width: int, layers: int, heads: int, eps: float, causal: bool) -> None:
        super().__init__()
        self.causal = causal
        self.resblocks = nn.ModuleList(
            ResidualAttentionBlock(width, heads, eps) for _ in range(layers)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for block in self.resblocks:
            x = block(x, self.causal)
        return x


class CLIPVisionTransformer(nn.Module):
    """Normalised pixels ``[B, 3, S, S]`` -> image embeddings ``[B, embed_dim]``."""

    def __init__(self, config: CLIPConfig) -> None:
        super().__init__()
        width = config.vision_width
        self.image_size = config.image_size
        self.conv1 = nn.Conv2d(3, width, config.patch_size, config.patch_size, bias=False)
        self.class_embedding = nn.Parameter(torch.zeros(width))
        self.positional_embedding = nn.Parameter(torch.zeros(config.num_patches + 1, width))
        self.ln_pre = LayerNormFP32(width, eps=config.layer_norm_eps)
        self.transformer = Transformer(
            width, config.vision_layers, config.vision_heads, config.layer_norm_eps, causal=False
        )
        self.ln_post = LayerNormFP32(width, eps=config.layer_norm_eps)
        self.proj = nn.Parameter(torch.zeros(width, config.embed_dim))

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        size = self.image_size
        if pixels.shape[-2:] != (size, size):
            raise ValueError(
                f"CLIP image encoder expects {size}x{size} pixels, got {tuple(pixels.shape[-2:])}"
            )
        x = self.conv1(pixels.to(self.conv1.weight.dtype)).flatten(2).transpose(1, 2)
        cls = self.class_embedding.to(x.dtype).expand(x.shape[0], 1, -1)
        x = torch.cat((cls, x), dim=1) + self.positional_embedding.to(x.dtype)
        x = self.transformer(self.ln_pre(x))
        return self.ln_post(x[:, 0, :]) @ self.proj


class CLIPModel(nn.Module):
    """Both CLIP towers; ``state_dict`` keys equal those of OpenAI's ``ViT-*.pt`` files."""

    def __init__(self, config: CLIPConfig) -> None:
        super().__init__()
        self.config = config
        self.visual = CLIPVisionTransformer(config)
        self.transformer = Transformer(
            config.text_width, config.text_layers, config.text_heads, config.layer_norm_eps,
            causal=True,
        )
        self.token_embedding = nn.Embedding(config.vocab_size, config.text_width)
        self.positional_embedding = nn.Parameter(
            torch.zeros(config.context_length, config.text_width)
        )
        self.ln_final = LayerNormFP32(config.text_width, eps=config.layer_norm_eps)
        self.text_projection = nn.Parameter(torch.zeros(config.text_width, config.embed_dim))
        self.logit_scale = nn.Parameter(torch.tensor(0.0), requires_grad=False)

    def encode_image(self, pixels: torch.Tensor) -> torch.Tensor:
        """Unnormalised image embeddings ``[B, embed_dim]`` in the model's dtype."""
        return self.visual(pixels)

    def encode_text(self, input_ids: torch.Tensor) -> torch.Tensor:
        """Unnormalised text embeddings ``[B, embed_dim]`` of ids ``[B, L]`` (L <= context)."""
        length = input_ids.shape[1]
        if length > self.config.context_length:
            raise ValueError(
                f"token ids have {length} positions, CLIP takes {self.config.context_length}"
            )
        x = self.token_embedding(input_ids) + self.positional_embedding[:length]
        x = self.ln_final(self.transformer(x))
        eot = input_ids.argmax(dim=-1)
        return x[torch.arange(x.shape[0], device=x.device), eot] @ self.text_projection


def _count_blocks(state_dict: Mapping[str, torch.Tensor], prefix: str) -> int:
    pattern = re.compile(re.escape(prefix) + r"resblocks\.(\d+)\.attn\.in_proj_weight")
    return len({m.group(1) for m in map(pattern.fullmatch, state_dict) if m})


def infer_clip_config(state_dict: Mapping[str, torch.Tensor], source: str) -> CLIPConfig:
    """Sizes of a ViT CLIP from its weights, with OpenAI's 64-wide heads."""
    needed = (
        "visual.conv1.weight", "visual.positional_embedding", "visual.proj",
        "text_projection", "positional_embedding", "token_embedding.weight", "ln_final.weight",
    )
    missing = [k for k in needed if k not in state_dict]
    if missing:
        raise CheckpointError(
            f"{source} is not an OpenAI ViT CLIP checkpoint (no {', '.join(missing)}); "
            "ResNet CLIP models are not supported"
        )
    conv = state_dict["visual.conv1.weight"]
    grid = round((state_dict["visual.positional_embedding"].shape[0] - 1) ** 0.5)
    vision_width = conv.shape[0]
    text_width = state_dict["ln_final.weight"].shape[0]
    return CLIPConfig(
        embed_dim=state_dict["text_projection"].shape[1],
        image_size=conv.shape[-1] * grid,
        patch_size=conv.shape[-1],
        vision_width=vision_width,
        vision_layers=_count_blocks(state_dict, "visual.transformer."),
        vision_heads=max(1, vision_width // HEAD_DIM),
        context_length=state_dict["positional_embedding"].shape[0],
        vocab_size=state_dict["token_embedding.weight"].shape[0],
        text_width=text_width,
        text_layers=_count_blocks(state_dict, "transformer."),
        text_heads=max(1, text_width // HEAD_DIM),
    )
