"""MPS's condition-aware cross-modeling module (Zhang et al., CVPR 2024), written from its
published description and model code, with the parameter names of its checkpoint.

Image tokens (CLIP's projected patch features) are the queries. Each of the ``layers``
stages is a residual cross-attention from the image tokens to the prompt's tokens
(multi-query: ``heads`` query heads share one key/value head; the prompt tokens the
condition does not select are masked out), with a parallel SwiGLU feed-forward, then a
residual parallel block of rotary self-attention (again one shared key/value head)
and a SwiGLU feed-forward. LayerNorms have a weight and a fixed zero bias. The
class token of the output is the image feature that MPS compares with the prompt.
"""

from __future__ import annotations

from typing import Tuple

import torch
import torch.nn.functional as F
from torch import nn

from .layers import Linear, merge_heads, split_heads


class BiasFreeLayerNorm(nn.Module):
    """LayerNorm with a learnt weight and a bias that is a zero buffer (it is saved)."""

    def __init__(self, width: int) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(width))
        self.register_buffer("bias", torch.zeros(width))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.layer_norm(x, x.shape[-1:], self.weight, self.bias)


class SwiGLU(nn.Module):
    """The first half of the features gated by SiLU of the second half."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        value, gate = x.chunk(2, dim=-1)
        return F.silu(gate) * value


def shared_head_attention(
    query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, mask: torch.Tensor | None = None
) -> torch.Tensor:
    """Attention of ``[B, H, I, D]`` queries on one key/value head ``[B, J, D]`` each;
    ``mask`` is added to the scores (``[B, 1, 1, J]``, 0 or -inf)."""
    heads = query.shape[1]
    key = key.unsqueeze(1).expand(-1, heads, -1, -1)
    value = value.unsqueeze(1).expand(-1, heads, -1, -1)
    return F.scaled_dot_product_attention(query, key, value, attn_mask=mask)


class RotaryEmbedding(nn.Module):
    """Rotary position angles ``[N, D]`` in float32 (the two halves repeat the same
    frequencies); the frequencies are a saved buffer."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.register_buffer("inv_freq", 1.0 / (10000 ** (torch.arange(0, dim, 2).float() / dim)))

    def forward(self, length: int) -> torch.Tensor:
        positions = torch.arange(length, device=self.inv_freq.device, dtype=torch.float32)
        angles = torch.outer(positions, self.inv_freq.float())
        return torch.cat((angles, angles), dim=-1)


def rotate(x: torch.Tensor, angles: torch.Tensor) -> torch.Tensor:
    """Rotary embedding of ``x`` (last dimension split in two halves) by ``angles``."""
    first, second = x.chunk(2, dim=-1)
    turned = torch.cat((-second, first), dim=-1)
    return x * angles.cos() + turned * angles.sin()


class CrossAttention(nn.Module):
    """Image tokens attend to the prompt's tokens; a parallel SwiGLU feed-forward is added."""

    def __init__(self, dim: int, heads: int, head_dim: int, ff_mult: int) -> None:
        super().__init__()
        self.heads = heads
        inner = heads * head_dim
        self.norm = BiasFreeLayerNorm(dim)
        self.to_q = Linear(dim, inner, bias=False)
        self.to_kv = Linear(dim, head_dim * 2, bias=False)
        self.to_out = Linear(inner, dim, bias=False)
        self.ff = nn.Sequential(
            Linear(dim, ff_mult * dim * 2, bias=False), SwiGLU(), Linear(ff_mult * dim, dim, bias=False)
        )

    def forward(self, x: torch.Tensor, context: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        x = self.norm(x)
        query = split_heads(self.to_q(x), self.heads)
        key, value = self.to_kv(context).chunk(2, dim=-1)
        out = self.to_out(merge_heads(shared_head_attention(query, key, value, mask)))
        return out + self.ff(x)


class ParallelBlock(nn.Module):
    """Rotary self-attention and a SwiGLU feed-forward from one fused projection, summed."""

    def __init__(self, dim: int, heads: int, head_dim: int, ff_mult: int) -> None:
        super().__init__()
        self.heads = heads
        inner, ff_inner = heads * head_dim, dim * ff_mult
        self.split: Tuple[int, int, int, int] = (inner, head_dim, head_dim, ff_inner * 2)
        self.norm = BiasFreeLayerNorm(dim)
        self.rotary_emb = RotaryEmbedding(head_dim)
        self.fused_attn_ff_proj = Linear(dim, sum(self.split), bias=False)
        self.attn_out = Linear(inner, dim, bias=False)
        self.ff_out = nn.Sequential(SwiGLU(), Linear(ff_inner, dim, bias=False))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.norm(x)
        query, key, value, ff = self.fused_attn_ff_proj(x).split(self.split, dim=-1)
        angles = self.rotary_emb(x.shape[1])
        query = rotate(split_heads(query, self.heads), angles).to(value.dtype)
        key = rotate(key, angles).to(value.dtype)
        out = merge_heads(shared_head_attention(query, key, value))
        return self.attn_out(out) + self.ff_out(ff)


class Residual(nn.Module):
    """``fn(x, ...) + x``; ``fn`` is kept under that name, as in the checkpoint."""

    def __init__(self, fn: nn.Module) -> None:
        super().__init__()
        self.fn = fn

    def forward(self, x: torch.Tensor, *args: torch.Tensor) -> torch.Tensor:
        return self.fn(x, *args) + x


class CrossModel(nn.Module):
    """``layers`` x (cross-attention to the prompt, then a parallel self-attention block)."""

    def __init__(self, dim: int, layers: int, heads: int, head_dim: int, ff_mult: int) -> None:
        super().__init__()
        self.layers = nn.ModuleList(
            nn.ModuleList([
                Residual(CrossAttention(dim, heads, head_dim, ff_mult)),
                Residual(ParallelBlock(dim, heads, head_dim, ff_mult)),
            ])
            for _ in range(layers)
        )

    def forward(self, image: torch.Tensor, text: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """Image tokens ``[B, N, dim]`` after attending to text tokens ``[B, L, dim]``;
        ``mask`` ``[B, L]`` is added to the cross-attention scores (0 keeps, -inf drops)."""
        mask = mask[:, None, None, :].to(image.dtype)
        for cross, block in self.layers:
            image = block(cross(image, text, mask))
        return image
