"""From ranked groups to training batches: pairs, datasets, samplers and the collate function."""

from __future__ import annotations

import itertools
from typing import Dict, Iterator, List, Sequence, Tuple

import torch
from torch.utils.data import Dataset, DistributedSampler

from ..preprocess import ImagePreprocessor
from ..tokenizers.bert import BertTokenizer
from .sources import ImageRef, PreferenceGroup, RowImage

Pair = Tuple[int, int, int]  # (group, better image, worse image)
Batch = Dict[str, torch.Tensor]


def make_pairs(groups: Sequence[PreferenceGroup]) -> List[Pair]:
    """Every pair of images of a prompt with different ranks; the smaller rank is better.

    Ties are dropped. Order: by group, then by image indices ``i < j``.
    """
    pairs = []
    for index, group in enumerate(groups):
        for i, j in itertools.combinations(range(len(group.images)), 2):
            if group.ranks[i] < group.ranks[j]:
                pairs.append((index, i, j))
            elif group.ranks[j] < group.ranks[i]:
                pairs.append((index, j, i))
    return pairs


class _GroupImages(Dataset):
    """Shared parts: prompts tokenised once, images decoded and preprocessed per item."""

    def __init__(
        self, groups: Sequence[PreferenceGroup], tokenizer: BertTokenizer, preprocess: ImagePreprocessor
    ) -> None:
        self.groups = list(groups)
        tokens = tokenizer([g.prompt for g in self.groups])
        self.input_ids = tokens["input_ids"]
        self.attention_mask = tokens["attention_mask"]
        self.preprocess = preprocess

    def _pixels(self, group: int, image: int) -> torch.Tensor:
        ref: ImageRef = self.groups[group].images[image]
        return self.preprocess(ref.load() if isinstance(ref, RowImage) else ref)

    def _text(self, group: int) -> Batch:
        return {"input_ids": self.input_ids[group], "attention_mask": self.attention_mask[group]}


class PairDataset(_GroupImages):
    """Item ``k``: the prompt's tokens and the preprocessed ``better`` and ``worse`` images."""

    def __init__(
        self, groups: Sequence[PreferenceGroup], tokenizer: BertTokenizer, preprocess: ImagePreprocessor
    ) -> None:
        super().__init__(groups, tokenizer, preprocess)
        self.pairs = make_pairs(self.groups)

    def __len__(self) -> int:
        return len(self.pairs)

    def __getitem__(self, index: int) -> Batch:
        group, better, worse = self.pairs[index]
        item = self._text(group)
        item["better"] = self._pixels(group, better)
        item["worse"] = self._pixels(group, worse)
        return item


class ImageDataset(_GroupImages):
    """Every (prompt, image) of the groups once: the reference set of the normalisation."""

    def __init__(
        self, groups: Sequence[PreferenceGroup], tokenizer: BertTokenizer, preprocess: ImagePreprocessor
    ) -> None:
        super().__init__(groups, tokenizer, preprocess)
        self.items = [(g, i) for g, group in enumerate(self.groups) for i in range(len(group.images))]

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, index: int) -> Batch:
        group, image = self.items[index]
        item = self._text(group)
        item["pixels"] = self._pixels(group, image)
        return item


def collate(items: List[Batch]) -> Batch:
    """Stack the fields of dataset items into batch tensors."""
    return {key: torch.stack([item[key] for item in items]) for key in items[0]}


class EpochSampler(DistributedSampler):
    """``DistributedSampler`` (one seeded permutation per epoch, shard ``rank::world``)
    that can start part-way through an epoch, for resuming.

    The first ``k`` items of every shard together are the first ``k * world`` items of
    the permutation, so a step sees the same pairs whatever the number of processes.
    """

    def __init__(self, dataset: Dataset, world_size: int, rank: int, seed: int) -> None:
        super().__init__(dataset, num_replicas=world_size, rank=rank, shuffle=True, seed=seed)
        self.skip = 0

    def set_position(self, epoch: int, skip: int) -> None:
        """Iterate epoch ``epoch`` from this shard's item ``skip`` on."""
        self.set_epoch(epoch)
        self.skip = skip

    def __iter__(self) -> Iterator[int]:
        return itertools.islice(super().__iter__(), self.skip, None)

    def __len__(self) -> int:
        return max(0, super().__len__() - self.skip)


class ShardSampler(torch.utils.data.Sampler):
    """Items ``rank, rank + world, ...`` in order, without padding (exact sums over shards)."""

    def __init__(self, length: int, world_size: int, rank: int) -> None:
        self.indices = range(rank, length, world_size)

    def __iter__(self) -> Iterator[int]:
        return iter(self.indices)

    def __len__(self) -> int:
        return len(self.indices)


def random_hflip(pixels: torch.Tensor) -> torch.Tensor:
    """Flip each image of ``[B, 3, H, W]`` left-right with probability 1/2 (global torch RNG)."""
    flip = torch.rand(pixels.shape[0], device=pixels.device) < 0.5
    return torch.where(flip[:, None, None, None], pixels.flip(-1), pixels)
