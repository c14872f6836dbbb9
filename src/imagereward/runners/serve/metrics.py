"""Prometheus metrics of the reward server, exposed at ``GET /metrics``.

The ingress counts requests, latency, errors and decoded images; each model replica
counts its pairs, batch sizes and queue depth under a ``model`` label. A scrape of the
ingress asks one replica of each model for its samples and renders them all together.
"""

from __future__ import annotations

from typing import Any, Dict, Iterable, Iterator, List

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    ProcessCollector,
    disable_created_metrics,
    generate_latest,
)
from prometheus_client.exposition import CONTENT_TYPE_LATEST
from prometheus_client.metrics_core import Metric

BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256)
FORWARD_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)

disable_created_metrics()  # no *_created series: they double the text and say nothing here


class ServerMetrics:
    """Requests, latency, errors, decoded images and memory of one ingress replica."""

    content_type = CONTENT_TYPE_LATEST

    def __init__(self, replica: str, models: str) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter(
            "imagereward_requests", "Requests answered, by endpoint and HTTP status",
            ["endpoint", "status"], registry=self.registry,
        )
        self.errors = Counter(
            "imagereward_errors", "Refused or failed requests, by kind",
            ["kind"], registry=self.registry,
        )
        self.latency = Histogram(
            "imagereward_request_latency_seconds", "Time from request to response, by endpoint",
            ["endpoint"], buckets=LATENCY_BUCKETS, registry=self.registry,
        )
        self.images_decoded = Counter(
            "imagereward_images_decoded", "Images opened and decoded (once per image, whatever the models)",
            registry=self.registry,
        )
        info = Gauge(
            "imagereward_replica_info", "The ingress replica answering this scrape and its models",
            ["replica", "models"], registry=self.registry,
        )
        info.labels(replica=replica, models=models).set(1)
        ProcessCollector(registry=self.registry)  # process_resident_memory_bytes, CPU seconds

    def render(self, model_families: Iterable[List[Metric]] = ()) -> bytes:
        """This replica's metrics and the models' samples, each family once."""
        merged = _merge([list(self.registry.collect()), *model_families])
        registry = CollectorRegistry(auto_describe=False)
        registry.register(_Fixed(merged))
        return generate_latest(registry)


class ModelMetrics:
    """Pairs, batch sizes and queue depth of one model replica, labelled with its model."""

    def __init__(self, model: str, replica: str) -> None:
        self.registry = CollectorRegistry()
        labels = {"model": model, "replica": replica}
        self.pairs = Counter(
            "imagereward_pairs", "(prompt, image) pairs scored, by model",
            list(labels), registry=self.registry,
        ).labels(**labels)
        self.batch_size = Histogram(
            "imagereward_batch_size", "Pairs per forward pass, by model",
            list(labels), buckets=BATCH_BUCKETS, registry=self.registry,
        ).labels(**labels)
        self.forward_seconds = Histogram(
            "imagereward_forward_seconds", "Seconds per forward pass, by model (their sum: the model's busy time)",
            list(labels), buckets=FORWARD_BUCKETS, registry=self.registry,
        ).labels(**labels)
        self.queue_depth = Gauge(
            "imagereward_queue_depth", "Pairs admitted and not yet scored, by model",
            list(labels), registry=self.registry,
        ).labels(**labels)
        self.queue_depth.set(0)

    def families(self) -> List[Metric]:
        return list(self.registry.collect())


def _merge(groups: Iterable[List[Metric]]) -> List[Metric]:
    by_name: Dict[str, Metric] = {}
    for families in groups:
        for family in families:
            known = by_name.get(family.name)
            if known is None:
                by_name[family.name] = family
            else:
                known.samples.extend(family.samples)
    return list(by_name.values())


class _Fixed:
    def __init__(self, families: List[Metric]) -> None:
        self._families = families

    def collect(self) -> Iterator[Any]:
        return iter(self._families)
