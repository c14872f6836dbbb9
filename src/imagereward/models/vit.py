"""BLIP's ViT image encoder, parameter names as in timm / BLIP checkpoints."""

from __future__ import annotations

from typing import List, Optional

import torch
import torch.utils.checkpoint
from torch import nn

from ..config import VisionConfig
from .layers import DropPath, Linear, attention, merge_heads


class PatchEmbed(nn.Module):
    def __init__(self, config: VisionConfig) -> None:
        super().__init__()
        self.proj = nn.Conv2d(3, config.width, config.patch_size, config.patch_size)

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        return self.proj(pixels).flatten(2).transpose(1, 2)


class Attention(nn.Module):
    def __init__(self, width: int, heads: int) -> None:
        super().__init__()
        self.heads = heads
        self.qkv = Linear(width, width * 3)
        self.proj = Linear(width, width)

    def forward(self, x: torch.Tensor, residual: Optional[torch.Tensor] = None,
                first_only: bool = False) -> torch.Tensor:
        """Self-attention of ``x`` ``[B, N, W]``, plus ``residual`` if given; with
        ``first_only``, only the first token's output ``[B, 1, W]`` (it still attends to all)."""
        batch, length, width = x.shape
        qkv = self.qkv(x).view(batch, length, 3, self.heads, width // self.heads)
        query, key, value = qkv.permute(2, 0, 3, 1, 4).unbind(0)
        if first_only:
            query = query[:, :, :1]
        return self.proj(merge_heads(attention(query, key, value)), residual=residual)


class Mlp(nn.Module):
    def __init__(self, width: int, hidden: int) -> None:
        super().__init__()
        self.fc1 = Linear(width, hidden)
        self.fc2 = Linear(hidden, width)

    def forward(self, x: torch.Tensor, residual: Optional[torch.Tensor] = None) -> torch.Tensor:
        """``fc2(GELU(fc1(x)))``, plus ``residual`` if given."""
        return self.fc2(self.fc1(x, gelu=True), residual=residual)


class Block(nn.Module):
    """Pre-norm transformer block."""

    def __init__(self, config: VisionConfig, drop_path: float) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(config.width, eps=config.layer_norm_eps)
        self.attn = Attention(config.width, config.heads)
        self.drop_path = DropPath(drop_path)
        self.norm2 = nn.LayerNorm(config.width, eps=config.layer_norm_eps)
        self.mlp = Mlp(config.width, int(config.width * config.mlp_ratio))

    def forward(self, x: torch.Tensor, first_only: bool = False) -> torch.Tensor:
        """The block on ``[B, N, W]`` tokens; with ``first_only``, only the class token's
        output ``[B, 1, W]`` (what a last block computes when nothing reads the rest)."""
        if self.training and self.drop_path.rate > 0.0:
            x = x + self.drop_path(self.attn(self.norm1(x)))
            x = x + self.drop_path(self.mlp(self.norm2(x)))
            return x[:, :1] if first_only else x
        # Without stochastic depth the residual additions go into the output projections.
        x = self.attn(self.norm1(x), residual=x[:, :1].contiguous() if first_only else x, first_only=first_only)
        return self.mlp(self.norm2(x), residual=x)


class VisionTransformer(nn.Module):
    """Maps ``[B, 3, S, S]`` normalised pixels to ``[B, 1 + patches, width]`` tokens."""

    def __init__(self, config: VisionConfig) -> None:
        super().__init__()
        self.config = config
        self.patch_embed = PatchEmbed(config)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, config.width))
        self.pos_embed = nn.Parameter(torch.zeros(1, config.num_patches + 1, config.width))
        rates = torch.linspace(0, config.drop_path_rate, config.depth, device="cpu").tolist()
        self.blocks = nn.ModuleList(Block(config, rate) for rate in rates)
        self.norm = nn.LayerNorm(config.width, eps=config.layer_norm_eps)
        self.gradient_checkpointing = False

    def leading_parameters(self, blocks: int) -> List[nn.Parameter]:
        """The stem (patch embedding, class token, position embedding) and the first ``blocks`` blocks."""
        stem = [*self.patch_embed.parameters(), self.cls_token, self.pos_embed]
        return stem + [p for block in self.blocks[:blocks] for p in block.parameters()]

    def forward(self, pixels: torch.Tensor, cls_only: bool = False) -> torch.Tensor:
        """Tokens ``[B, 1 + patches, W]``; with ``cls_only`` only the class token ``[B, 1, W]``,
        whose last block then skips the other tokens' attention outputs and MLP (the same
        values up to float rounding)."""
        size = self.config.image_size
        if pixels.shape[-2:] != (size, size):
            raise ValueError(
                f"image encoder expects {size}x{size} pixels, got {tuple(pixels.shape[-2:])}"
            )
        x = self.patch_embed(pixels)
        cls = self.cls_token.expand(x.shape[0], -1, -1)
        x = torch.cat((cls, x), dim=1) + self.pos_embed
        last = len(self.blocks) - 1
        for index, block in enumerate(self.blocks):
            first_only = cls_only and index == last
            if self.gradient_checkpointing and self.training:
                x = torch.utils.checkpoint.checkpoint(block, x, first_only, use_reentrant=False)
            else:
                x = block(x, first_only)
        return self.norm(x)
