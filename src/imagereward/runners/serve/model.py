"""One served model as its own Serve deployment: a scorer, its batch queue, its admission bound.

The ingress (:mod:`imagereward.runners.serve.app`) checks and decodes every image and
sends each model the pixels of its own preprocessing chain. Here the pairs of all
concurrent requests join one :class:`~imagereward.runners.serve.batcher.PairBatcher` and
share forward passes; each call awaits exactly its own pairs, in order. A replica never decodes and never
answers HTTP: it takes pixels and returns an :data:`Answer`, so a full queue is an
answer (429 naming the model), not an exception that crosses processes.
"""

from __future__ import annotations

import asyncio
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Dict, List

import torch
from ray import serve

from ...items import collate_pixels
from .batcher import PairBatcher
from .limits import AdmissionGate, Refusal
from .metrics import ModelMetrics
from .settings import ModelSettings

# What a model replica answers: {"scores": ...} or {"refusal": {"status", "kind", "detail", "headers"}}.
Answer = Dict[str, Any]


def refused(refusal: Refusal) -> Answer:
    return {"refusal": {"status": refusal.status, "kind": refusal.kind, "detail": refusal.detail,
                        "headers": refusal.headers}}


@serve.deployment
class ModelReplica:
    """A replica of one model: loads it (on its GPU if it has one), batches pairs across calls."""

    def __init__(self, settings: Dict[str, Any]) -> None:
        from ...allocator import keep_freed_memory

        self.settings = ModelSettings.model_validate(settings)
        torch.set_num_threads(self.settings.threads)  # the replica's CPU share, not the machine
        keep_freed_memory()  # the replica's process is the server's own; set before the model loads
        self.scorer = self.settings.spec().load()  # CUDA when it has a GPU, unless int8 (CPU)
        self.model_thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="imagereward-model")
        self.gate = AdmissionGate(self.settings.max_queue_pairs)
        replica = str(serve.get_replica_context().replica_id.unique_id)
        self.metrics = ModelMetrics(self.settings.key, replica)
        self.batcher = PairBatcher(self._forward, self.settings.max_batch_size, self.settings.batch_wait_ms / 1000.0)
        self.scorer.warm_up()

    async def describe(self) -> Dict[str, Any]:
        """What the ingress needs to feed this model: its preprocessing, and what it runs on."""
        return {
            "key": self.settings.key,
            "label": self.settings.label,
            "preprocess": self.scorer.preprocess.config,
            "device": str(self.scorer.device),
            "dtype": str(self.scorer.compute_dtype).replace("torch.", ""),
            "int8": self.scorer.int8_calibration is not None,
        }

    async def score(self, prompts: List[str], pixels: torch.Tensor) -> Answer:
        """Scores of row-aligned pairs through the shared batch queue."""
        count = len(prompts)
        try:
            self.gate.admit(count)
        except Refusal as refusal:
            return refused(refusal)
        self.metrics.queue_depth.set(self.gate.depth)
        try:
            scores = await asyncio.gather(*(self.batcher.score(p, x) for p, x in zip(prompts, pixels)))
        finally:
            self.gate.release(count)
            self.metrics.queue_depth.set(self.gate.depth)
        self.metrics.pairs.inc(count)
        return {"scores": list(scores)}

    async def score_matrix(self, prompts: List[str], pixels: torch.Tensor) -> Answer:
        """Every prompt against every image; each image is encoded once."""
        count = pixels.shape[0]
        try:
            self.gate.admit(count)  # the queue holds images here
        except Refusal as refusal:
            return refused(refusal)
        try:
            loop = asyncio.get_running_loop()
            matrix = await loop.run_in_executor(self.model_thread, self.scorer.score_pixel_matrix, prompts, pixels)
        finally:
            self.gate.release(count)
        self.metrics.pairs.inc(matrix.numel())
        return {"scores": matrix.tolist()}

    async def metric_families(self) -> List[Any]:
        return self.metrics.families()

    async def _forward(self, prompts: List[str], pixels: List[torch.Tensor]) -> List[float]:
        """One forward pass for the pairs of any number of calls."""
        self.metrics.batch_size.observe(len(prompts))
        start = time.perf_counter()
        loop = asyncio.get_running_loop()
        results = await loop.run_in_executor(
            self.model_thread, self.scorer.score_pixels, prompts, collate_pixels(pixels)
        )
        seconds = time.perf_counter() - start
        self.metrics.forward_seconds.observe(seconds)
        self.gate.observe_throughput(len(prompts), seconds)
        return results
