"""Dynamic batching of one model's pairs: a batch is formed when the model is free to run it.

Serve's ``@serve.batch`` forms the next batch as soon as its wait expires, even while the
model is still busy with the previous one: with a forward pass much longer than the wait,
the queued pairs are cut into many small batches that then run one after another (2-3
pairs per forward pass with 32 pairs waiting, measured on a 2-core CPU). Here one loop
takes the waiting pairs only once the previous forward pass has returned, so everything
that arrived meanwhile shares the next pass (up to ``max_batch_size``). A pair that finds
the model idle waits at most ``wait_s`` for company.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from typing import Awaitable, Callable, Deque, List, Optional, Tuple

import torch

# Runs one forward pass: (prompts, per-pair pixels) -> one score per pair.
RunBatch = Callable[[List[str], List[torch.Tensor]], Awaitable[List[float]]]


class PairBatcher:
    """Pairs from any number of concurrent calls share forward passes, in arrival order."""

    def __init__(self, run: RunBatch, max_batch_size: int, wait_s: float) -> None:
        if max_batch_size < 1:
            raise ValueError(f"max_batch_size must be at least 1, got {max_batch_size}")
        self._run = run
        self.max_batch_size = max_batch_size
        self.wait_s = max(0.0, wait_s)
        # (arrival time, prompt, pixels, future) in arrival order
        self._pending: Deque[Tuple[float, str, torch.Tensor, asyncio.Future]] = deque()
        self._arrived = asyncio.Event()
        self._loop_task: Optional[asyncio.Task] = None

    async def score(self, prompt: str, pixels: torch.Tensor) -> float:
        """The score of one pair, from whichever forward pass it joins."""
        loop = asyncio.get_running_loop()
        future = loop.create_future()
        self._pending.append((time.monotonic(), prompt, pixels, future))
        self._arrived.set()
        if self._loop_task is None or self._loop_task.done():
            self._loop_task = loop.create_task(self._serve())
        return await future

    async def _serve(self) -> None:
        while True:
            batch = await self._next_batch()
            if not batch:
                continue
            futures = [future for _, _, _, future in batch]
            try:
                scores = await self._run([p for _, p, _, _ in batch], [x for _, _, x, _ in batch])
            except Exception as error:  # every caller of this pass gets the error
                for future in futures:
                    if not future.done():
                        future.set_exception(error)
                continue
            for future, score in zip(futures, scores):
                if not future.done():
                    future.set_result(score)

    async def _next_batch(self) -> List[Tuple[float, str, torch.Tensor, asyncio.Future]]:
        """Waits for a first pair, then until the batch is full or the oldest pair has waited
        ``wait_s``; returns the pairs taken, without those whose callers went away."""
        while not self._pending:
            self._arrived.clear()
            await self._arrived.wait()
        while len(self._pending) < self.max_batch_size:
            left = self.wait_s - (time.monotonic() - self._pending[0][0])
            if left <= 0:
                break
            self._arrived.clear()
            try:
                await asyncio.wait_for(self._arrived.wait(), left)
            except asyncio.TimeoutError:
                break
        batch = []
        while self._pending and len(batch) < self.max_batch_size:
            item = self._pending.popleft()
            if not item[3].cancelled():
                batch.append(item)
        return batch
