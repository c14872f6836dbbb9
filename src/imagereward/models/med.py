"""BLIP's text encoder: BERT with a cross-attention block in every layer.

Module and parameter names follow the original BLIP ``med.py`` so that its
checkpoints load with strict key checking. ``mode="multimodal"`` attends to
image tokens; ``mode="text"`` skips cross-attention (BLIP's unimodal encoder).

Several prompts can meet one image: with ``I`` images and ``I * P`` text rows
(image-major: row ``i * P + p`` is prompt ``p`` with image ``i``), cross-attention
runs once per image with the queries of all ``P`` prompts side by side, so each
layer projects an image's keys and values once instead of ``P`` times. Queries
are independent rows and image tokens carry no mask, so this is the same math.

``BertModel(..., cls_only=True)`` computes only what the ``[CLS]`` state depends on: it
drops padding columns that every row masks (every query gives them zero weight), runs
the last layer for the ``[CLS]`` row alone, and, in inference, folds cross-attention's
key and value projections into the queries when an image meets fewer text rows than
it has tokens (see :meth:`BertSelfAttention.attend_folded`).
"""

from __future__ import annotations

from typing import List, Optional

import torch
import torch.utils.checkpoint
from torch import nn

from ..config import TextConfig
from .layers import Linear, attention, merge_heads, runs_int8, split_heads

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
        self.query = Linear(config.hidden_size, config.hidden_size)
        self.key = Linear(context_width, config.hidden_size)
        self.value = Linear(context_width, config.hidden_size)

    def forward(
        self, x: torch.Tensor, context: torch.Tensor, mask: Optional[torch.Tensor]
    ) -> torch.Tensor:
        query = split_heads(self.query(x), self.num_heads)
        key = split_heads(self.key(context), self.num_heads)
        value = split_heads(self.value(context), self.num_heads)
        dropout = self.dropout if self.training else 0.0
        return merge_heads(attention(query, key, value, mask=mask, dropout=dropout))

    def fold_pays(self, rows: int, context: torch.Tensor) -> bool:
        """Whether :meth:`attend_folded` does fewer multiply-adds for ``rows`` text rows
        per image than projecting the image's keys and values (about 50 rows for BLIP)."""
        tokens, width = context.shape[-2], context.shape[-1]
        hidden = self.query.out_features
        projected = tokens * width * hidden + rows * tokens * hidden
        folded = rows * width * hidden + rows * self.num_heads * width * tokens
        return folded < projected

    def attend_folded(self, x: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
        """Attention of ``x`` ``[I, R, D]`` to ``context`` ``[I, N, W]`` (no mask, no dropout)
        without the ``N`` keys and values: per head ``h``, ``q_h . (W_k,h c + b_k,h)`` is
        ``(q_h W_k,h) . c`` plus a term constant over ``c`` that softmax cancels, and since
        the attention weights sum to one, ``sum_n p_n (W_v,h c_n + b_v,h)`` is
        ``W_v,h (sum_n p_n c_n) + b_v,h``. Same result up to rounding.
        """
        images, rows, _ = x.shape
        heads, width = self.num_heads, context.shape[-1]
        head_dim = self.query.out_features // heads
        query = self.query(x).view(images, rows, heads, head_dim) * head_dim**-0.5
        key_weight = self.key.weight.view(heads, head_dim, width)
        keys = torch.einsum("irhd,hdw->irhw", query, key_weight)
        scores = torch.bmm(keys.reshape(images, rows * heads, width), context.transpose(1, 2))
        weights = scores.softmax(dim=-1, dtype=torch.float32).to(x.dtype)
        mixed = torch.bmm(weights, context).view(images, rows, heads, width)
        value_weight = self.value.weight.view(heads, head_dim, width)
        out = torch.einsum("irhw,hdw->irhd", mixed, value_weight)
        return (out + self.value.bias.view(heads, head_dim)).reshape(images, rows, -1)


class BertResidualOutput(nn.Module):
    """Dense projection, dropout, residual connection and post-LayerNorm."""

    def __init__(self, in_features: int, config: TextConfig) -> None:
        super().__init__()
        self.dense = Linear(in_features, config.hidden_size)
        self.LayerNorm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.dropout = nn.Dropout(config.hidden_dropout)

    def forward(self, x: torch.Tensor, residual: torch.Tensor) -> torch.Tensor:
        if self.training and self.dropout.p > 0.0:
            return self.LayerNorm(self.dropout(self.dense(x)) + residual)
        return self.LayerNorm(self.dense(x, residual=residual))


class BertAttention(nn.Module):
    def __init__(self, config: TextConfig, context_width: int) -> None:
        super().__init__()
        self.self = BertSelfAttention(config, context_width)
        self.output = BertResidualOutput(config.hidden_size, config)

    def forward(
        self, x: torch.Tensor, context: torch.Tensor, mask: Optional[torch.Tensor]
    ) -> torch.Tensor:
        return self.output(self.self(x, context, mask), x)

    def cross(self, x: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
        """Attention to unmasked ``context``, folded where that is cheaper (inference only)."""
        attend = self.self
        # int8 projects keys and values whatever the shapes (folding would run them in
        # float for some prompts and not others: rewards would depend on the batch).
        if not self.training and not runs_int8(attend.key) and attend.fold_pays(x.shape[1], context):
            return self.output(attend.attend_folded(x, context), x)
        return self(x, context, None)


class BertIntermediate(nn.Module):
    def __init__(self, config: TextConfig) -> None:
        super().__init__()
        self.dense = Linear(config.hidden_size, config.intermediate_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.dense(x, gelu=True)


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
        first_only: bool = False,
    ) -> torch.Tensor:
        """``[B, L, D]`` -> ``[B, L, D]``, or ``[B, 1, D]`` for the first position alone."""
        x = self.attention(x[:, :1] if first_only else x, x, mask)
        if image_tokens is not None:
            x = self.cross_attend(x, image_tokens)
        return self.output(self.intermediate(x), x)

    def cross_attend(self, x: torch.Tensor, image_tokens: torch.Tensor) -> torch.Tensor:
        """Cross-attention of ``[I * P, L, D]`` text states to ``[I, N, W]`` image tokens."""
        images = image_tokens.shape[0]
        batch, length, width = x.shape
        grouped = x.reshape(images, (batch // images) * length, width)  # a view when P == 1
        return self.crossattention.cross(grouped, image_tokens).reshape(batch, length, width)


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
        first_only: bool = False,
    ) -> torch.Tensor:
        """All positions, or with ``first_only`` the last layer's first position ``[B, 1, D]``."""
        last = len(self.layer) - 1
        for index, layer in enumerate(self.layer):
            only = first_only and index == last
            if self.gradient_checkpointing and self.training:
                x = torch.utils.checkpoint.checkpoint(
                    layer, x, mask, image_tokens, only, use_reentrant=False
                )
            else:
                x = layer(x, mask, image_tokens, only)
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
        cls_only: bool = False,
    ) -> torch.Tensor:
        """Last hidden states ``[B, L, hidden]``; with ``cls_only`` those of the first
        (``[CLS]``) position alone ``[B, hidden]``, computed without the positions they
        do not depend on (the same values as ``forward(...)[:, 0]`` up to rounding)."""
        if not cls_only:
            return self._encode(input_ids, attention_mask, image_tokens, mode, first_only=False)
        length = unmasked_length(attention_mask)
        input_ids, attention_mask = input_ids[:, :length], attention_mask[:, :length]
        return self._encode(input_ids, attention_mask, image_tokens, mode, first_only=True)[:, 0]

    def _encode(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        image_tokens: Optional[torch.Tensor],
        mode: str,
        first_only: bool,
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
        return self.encoder(x, mask, image_tokens, first_only)


def unmasked_length(attention_mask: torch.Tensor) -> int:
    """Positions up to the last one that some row attends to (at least one).

    Later positions are padding in every row: each query gives them zero weight
    (``exp(-10000)`` is 0 in every floating type), so no other position depends on them.
    """
    attended = attention_mask.ne(0).any(dim=0)
    trailing = int(attended.flip(0).int().argmax()) if bool(attended.any()) else attended.numel() - 1
    return max(1, attended.numel() - trailing)
