"""The serving replica's batcher: pairs that arrive while the model is busy share the next pass."""

from __future__ import annotations

import asyncio
import time
from typing import List

import pytest
import torch

from imagereward.runners.serve.batcher import PairBatcher


class SlowModel:
    """Records each forward pass's prompts; a pass ends when the test releases it."""

    def __init__(self) -> None:
        self.batches: List[List[str]] = []
        self.release = asyncio.Event()
        self.fail_next = False

    async def run(self, prompts: List[str], pixels: List[torch.Tensor]) -> List[float]:
        self.batches.append(list(prompts))
        await self.release.wait()
        if self.fail_next:
            self.fail_next = False
            raise RuntimeError("out of memory")
        return [float(x.sum()) for x in pixels]


def _pixels(value: float) -> torch.Tensor:
    return torch.full((2,), value / 2)


async def _settle() -> None:
    for _ in range(20):
        await asyncio.sleep(0)


def test_pairs_arriving_during_a_pass_fill_the_next_one_in_order():
    async def main() -> None:
        model = SlowModel()
        batcher = PairBatcher(model.run, max_batch_size=4, wait_s=0.0)
        first = asyncio.ensure_future(batcher.score("p0", _pixels(0)))
        await _settle()
        assert model.batches == [["p0"]]  # the model was idle: it starts at once
        later = [asyncio.ensure_future(batcher.score(f"p{i}", _pixels(i))) for i in range(1, 7)]
        await _settle()
        assert len(model.batches) == 1  # nothing is cut into batches while the model is busy
        model.release.set()
        scores = await asyncio.gather(first, *later)
        assert scores == [float(i) for i in range(7)]
        assert model.batches == [["p0"], ["p1", "p2", "p3", "p4"], ["p5", "p6"]]

    asyncio.run(main())


def test_a_failed_pass_fails_its_own_pairs_and_the_next_pass_runs():
    async def main() -> None:
        model = SlowModel()
        batcher = PairBatcher(model.run, max_batch_size=8, wait_s=0.0)
        model.fail_next = True
        doomed = [asyncio.ensure_future(batcher.score(f"p{i}", _pixels(i))) for i in range(2)]
        await _settle()
        model.release.set()
        results = await asyncio.gather(*doomed, return_exceptions=True)
        assert all(isinstance(r, RuntimeError) and "out of memory" in str(r) for r in results)
        assert await batcher.score("again", _pixels(5)) == 5.0

    asyncio.run(main())


def test_a_caller_that_went_away_leaves_the_next_batch():
    async def main() -> None:
        model = SlowModel()
        batcher = PairBatcher(model.run, max_batch_size=8, wait_s=0.0)
        busy = asyncio.ensure_future(batcher.score("busy", _pixels(0)))
        await _settle()
        gone = asyncio.ensure_future(batcher.score("gone", _pixels(1)))
        kept = asyncio.ensure_future(batcher.score("kept", _pixels(2)))
        await _settle()
        gone.cancel()
        model.release.set()
        assert await kept == 2.0 and await busy == 0.0
        assert model.batches == [["busy"], ["kept"]]

    asyncio.run(main())


def test_a_lone_pair_waits_for_company_at_most_the_wait():
    async def main() -> None:
        model = SlowModel()
        model.release.set()
        batcher = PairBatcher(model.run, max_batch_size=8, wait_s=0.2)
        start = time.monotonic()
        first = asyncio.ensure_future(batcher.score("a", _pixels(1)))
        await asyncio.sleep(0.05)
        second = asyncio.ensure_future(batcher.score("b", _pixels(2)))
        assert await asyncio.gather(first, second) == [1.0, 2.0]
        waited = time.monotonic() - start
        assert model.batches == [["a", "b"]]  # the second joined within the first one's wait
        assert 0.15 <= waited < 1.0, waited

    asyncio.run(main())


def test_max_batch_size_is_checked():
    with pytest.raises(ValueError, match="max_batch_size"):
        PairBatcher(SlowModel().run, max_batch_size=0, wait_s=0.0)
