"""Prometheus metrics of one server replica, exposed at ``GET /metrics``."""

from __future__ import annotations

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

BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256)
LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)


class ServerMetrics:
    """Requests, pairs, batch sizes, queue depth, latency, errors and memory of one replica."""

    content_type = CONTENT_TYPE_LATEST

    def __init__(self, replica: str, model: str) -> None:
        disable_created_metrics()  # no *_created series: they double the text and say nothing here
        self.registry = CollectorRegistry()
        self.requests = Counter(
            "imagereward_requests", "Requests answered, by endpoint and HTTP status",
            ["endpoint", "status"], registry=self.registry,
        )
        self.pairs = Counter(
            "imagereward_pairs", "(prompt, image) pairs scored, by endpoint",
            ["endpoint"], registry=self.registry,
        )
        self.errors = Counter(
            "imagereward_errors", "Refused or failed requests, by kind",
            ["kind"], registry=self.registry,
        )
        self.batch_size = Histogram(
            "imagereward_batch_size", "Pairs per forward pass",
            buckets=BATCH_BUCKETS, registry=self.registry,
        )
        self.queue_depth = Gauge(
            "imagereward_queue_depth", "Pairs admitted and not yet scored",
            registry=self.registry,
        )
        self.latency = Histogram(
            "imagereward_request_latency_seconds", "Time from request to response, by endpoint",
            ["endpoint"], buckets=LATENCY_BUCKETS, registry=self.registry,
        )
        info = Gauge(
            "imagereward_replica_info", "The replica answering this scrape and its model",
            ["replica", "model"], registry=self.registry,
        )
        info.labels(replica=replica, model=model).set(1)
        ProcessCollector(registry=self.registry)  # process_resident_memory_bytes, CPU seconds

    def render(self) -> bytes:
        return generate_latest(self.registry)
