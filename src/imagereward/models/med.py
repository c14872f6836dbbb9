"""BLIP's text encoder: BERT with a cross-attention block in every layer.

Module and parameter names follow the original BLIP ``med.py`` so that its
checkpoints load with strict key checking. ``mode="multimodal"`` attends to
image tokens; ``mode="text"`` skips cross-attention (BLIP's unimodal encoder).

Several prompts can meet one image: with ``I`` images and ``I * P`` text rows
(image-major: row ``i * P + p`` is prompt ``p`` with image ``i``), cross-attention
runs once per image with the queries of all ``P`` prompts side by side, so each
layer projects an image's keys and values once instead of ``P`` times. Queries
are independent rows and image tokens carry no mask, so this is the same math.
"""

from __future__ import annotations

from typing import List, Optional

import torch
import torch.utils.checkpoint
from torch import nn

from ..config import TextConfig
from .layers import attention, merge_heads, split_heads

# BLIP's additive padding mask value (kept instead of dtype-min for exactness).
MASK_VALUE = -10000.0


def _embedding(rows: int, width: int) -> nn.Embedding:
    """An embedding initialised N(0, 0.02) as BERT, with no init work on the meta device.

    (``nn.Embedding``'s own init on meta tensors imports torch's compiler stack, which
    would add seconds to every model load.)
    """
    weight = torch.empty(rows, width)
    if not weight.is_meta:
        nn.init.normal_(weight, std=0.02)
    return nn.Embedding(rows, width, _weight=weight)


class BertEmbeddings(nn.Module):
    """Word plus absolute position embeddings (BLIP uses no token types)."""

    def __init__(self, config: TextConfig) -> None:
        super().__init__()
        self.word_embeddings = _embedding(config.vocab_size, config.hidden_size)
        self.word_embeddings.padding_idx = config.pad_token_id  # no gradient for [PAD]
        self.position_embeddings = _embedding(config.max_position_embeddings, config.hidden_size)
        self.LayerNorm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.dropout = nn.Dropout(config.hidden_dropout)

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        positions = torch.arange(input_ids.shape[1], device=input_ids.device)
        x = self.word_embeddings(input_ids) + self.position_embeddings(positions)
        return self.dropout(self.LayerNorm(x))


class BertSelfAttention(nn.Module):
    """Multi-head attention; keys and values come from ``context`` (width ``context_width``)."""

    def __init__(self, config: TextConfig, context_width: int) -> None:
        super().__init__()
        self.num_heads = config.num_heads
        self.dropout = config.attention_dropout
        self.query = nn.Linear(config.hidden_size, config.hidden_size)
        self.key = nn.Linear(context_width, config.hidden_size)
        self.value = nn.Linear(context_width, config.hidden_size)

    def forward(
        self, x: torch.Tensor, context: torch.Tensor, mask: Optional[torch.Tensor]
    ) -> torch.Tensor:
        query = split_heads(self.query(x), self.num_heads)
        key = split_heads(self.key(context), self.num_heads)
        value = split_heads(self.value(context), self.num_heads)
        dropout = self.dropout if self.training else 0.0
        return merge_heads(attention(query, key, value, mask=mask, dropout=dropout))


class BertResidualOutput(nn.Module):
    """Dense projection, dropout, residual connection and post-LayerNorm."""

    def __init__(self, in_features: int, config: TextConfig) -> None:
        super().__init__()
        self.dense = nn.Linear(in_features, config.hidden_size)
        self.LayerNorm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.dropout = nn.Dropout(config.hidden_dropout)

    def forward(self, x: torch.Tensor, residual: torch.Tensor) -> torch.Tensor:
        return self.LayerNorm(self.dropout(self.dense(x)) + residual)


class BertAttention(nn.Module):
    def __init__(self, config: TextConfig, context_width: int) -> None:
        super().__init__()
        self.self = BertSelfAttention(config, context_width)
        self.output = BertResidualOutput(config.hidden_size, config)

    def forward(
        self, x: torch.Tensor, context: torch.Tensor, mask: Optional[torch.Tensor]
    ) -> torch.Tensor:
        return self.output(self.self(x, context, mask), x)


class BertIntermediate(nn.Module):
    def __init__(self, config: TextConfig) -> None:
        super().__init__()
        self.dense = nn.Linear(config.hidden_size, config.intermediate_size)
        self.act = nn.GELU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.dense(x))


class BertLayer(nn.Module):
    def __init__(self, config: TextConfig) -> None:
        super().__init__()
        self.attention = BertAttention(config, config.hidden_size)
        self.crossattention = BertAttention(config, config.encoder_width)
        self.intermediate = BertIntermediate(config)
        self.output = BertResidualOutput(config.intermediate_size, config)

    def forward(
        self,
        x: torch.Tensor,
        mask: Optional[torch.Tensor],
        image_tokens: Optional[torch.Tensor],
    ) -> torch.Tensor:
        x = self.attention(x, x, mask)
        if image_tokens is not None:
            x = self.cross_attend(x, image_tokens)
        return self.output(self.intermediate(x), x)

    def cross_attend(self, x: torch.Tensor, image_tokens: torch.Tensor) -> torch.Tensor:
        """Cross-attention of ``[I * P, L, D]`` text states to ``[I, N, W]`` image tokens."""
        images = image_tokens.shape[0]
        batch, length, width = x.shape
        grouped = x.reshape(images, (batch // images) * length, width)  # a view when P == 1
        return self.crossattention(grouped, image_tokens, None).reshape(batch, length, width)


class BertEncoder(nn.Module):
    def __init__(self, config: TextConfig) -> None:
        super().__init__()
        self.layer = nn.ModuleList(BertLayer(config) for _ in range(config.num_layers))
        self.gradient_checkpointing = False

    def forward(
        self,
        x: torch.Tensor,
        mask: Optional[torch.Tensor],
        image_tokens: Optional[torch.Tensor],
    ) -> torch.Tensor:
        for layer in self.layer:
            if self.gradient_checkpointing and self.training:
                x = torch.utils.checkpoint.checkpoint(
                    layer, x, mask, image_tokens, use_reentrant=False
                )
            else:
                x = layer(x, mask, image_tokens)
        return x


class BertModel(nn.Module):
    """BERT encoder returning the last hidden states ``[B, L, hidden]``."""

    def __init__(self, config: TextConfig) -> None:
        super().__init__()
        self.config = config
        self.embeddings = BertEmbeddings(config)
        self.encoder = BertEncoder(config)

    def leading_parameters(self, layers: int) -> List[nn.Parameter]:
        """The embeddings and the first ``layers`` layers."""
        modules = [self.embeddings, *self.encoder.layer[:layers]]
        return [p for module in modules for p in module.parameters()]

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        image_tokens: Optional[torch.Tensor] = None,
        mode: str = "multimodal",
    ) -> torch.Tensor:
        if mode == "multimodal":
            if image_tokens is None:
                raise ValueError("multimodal mode needs image tokens")
            if input_ids.shape[0] % image_tokens.shape[0] != 0:
                raise ValueError(
                    f"{input_ids.shape[0]} text rows cannot be split evenly over "
                    f"{image_tokens.shape[0]} images"
                )
        elif mode == "text":
            image_tokens = None
        else:
            raise ValueError(f"mode must be 'multimodal' or 'text', got {mode!r}")
        x = self.embeddings(input_ids)
        # Additive padding mask [B, 1, 1, L] in the activations' dtype.
        mask = (1.0 - attention_mask[:, None, None, :].to(x.dtype)) * MASK_VALUE
        if image_tokens is not None:
            image_tokens = image_tokens.to(x.dtype)
        return self.encoder(x, mask, image_tokens)
