"""The pairwise objective and the passes without gradients: validation and reward statistics."""

from __future__ import annotations

import contextlib
import math
from typing import ContextManager, Iterable, Tuple

import torch
import torch.nn.functional as F
from torch import nn

from .data import Batch
from ..distributed import DistContext, all_reduce_sum


def autocast(device: torch.device, precision: str) -> ContextManager:
    """bf16 autocast when asked for, else nothing (fp32)."""
    if precision == "bf16":
        return torch.autocast(device_type=device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()


def pair_rewards(model: nn.Module, batch: Batch, device: torch.device) -> Tuple[torch.Tensor, torch.Tensor]:
    """Raw float32 rewards of the better and the worse image of each pair, in one forward pass."""
    ids = batch["input_ids"].to(device)
    mask = batch["attention_mask"].to(device)
    pixels = torch.cat([batch["better"], batch["worse"]]).to(device)
    rewards = model(torch.cat([ids, ids]), torch.cat([mask, mask]), pixels).float()
    return rewards.chunk(2)


def pairwise_loss(better: torch.Tensor, worse: torch.Tensor) -> torch.Tensor:
    """Per-pair ``-log sigmoid(r_better - r_worse)`` (the two-way cross-entropy of the paper)."""
    return F.softplus(worse - better)


@torch.no_grad()
def evaluate_pairs(
    model: nn.Module, batches: Iterable[Batch], context: DistContext, precision: str
) -> Tuple[float, float, float]:
    """Mean loss, accuracy (a tie counts as wrong) and the standard deviation of the raw
    rewards, over all pairs of all processes."""
    totals = torch.zeros(5, dtype=torch.float64, device=context.device)
    for batch in batches:
        with autocast(context.device, precision):
            better, worse = pair_rewards(model, batch, context.device)
        rewards = torch.cat([better, worse]).double()
        totals[0] += pairwise_loss(better, worse).sum().double()
        totals[1] += (better > worse).sum()
        totals[2] += better.numel()
        totals[3] += rewards.sum()
        totals[4] += rewards.square().sum()
    loss, correct, count, total, squares = all_reduce_sum(totals, context).tolist()
    if count == 0:
        raise ValueError("the validation set has no pairs with different ranks")
    mean = total / (2 * count)
    return loss / count, correct / count, math.sqrt(max(squares / (2 * count) - mean * mean, 0.0))


@torch.no_grad()
def reward_statistics(
    model: nn.Module, batches: Iterable[Batch], context: DistContext, precision: str
) -> Tuple[float, float, int]:
    """Mean and (population) standard deviation of raw rewards, and the number of images."""
    totals = torch.zeros(3, dtype=torch.float64, device=context.device)
    for batch in batches:
        with autocast(context.device, precision):
            rewards = model(
                batch["input_ids"].to(context.device),
                batch["attention_mask"].to(context.device),
                batch["pixels"].to(context.device),
            ).double()
        totals[0] += rewards.sum()
        totals[1] += rewards.square().sum()
        totals[2] += rewards.numel()
    total, squares, count = all_reduce_sum(totals, context).tolist()
    if count == 0:
        raise ValueError("the reference set for the reward normalisation has no images")
    mean = total / count
    return mean, math.sqrt(max(squares / count - mean * mean, 0.0)), int(count)
