"""Prometheus metrics of one app instance (its own registry, so several apps can
live in one process, e.g. in tests)."""

from __future__ import annotations

import threading

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

__all__ = ["Metrics"]

_LATENCY = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10)
_BATCH = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024)


OTHER_MODELS = "_other"


class Metrics:
    """``max_models`` bounds the per-model label values: the first ``max_models``
    model names seen get their own series, every later one is counted under
    ``_other`` (a server with thousands of tasks would otherwise export thousands
    of histograms). Names stay tracked for the process's lifetime."""

    def __init__(self, max_models: int = 200) -> None:
        self.max_models = max_models
        self._models: set[str] = set()
        self._models_lock = threading.Lock()
        r = self.registry = CollectorRegistry()
        self.requests = Counter(
            "pemn_requests",
            "Inference requests by model, endpoint and HTTP status",
            ["model", "endpoint", "status"],
            registry=r,
        )
        self.latency = Histogram(
            "pemn_request_latency_seconds",
            "End-to-end inference latency inside the server",
            ["model", "endpoint"],
            buckets=_LATENCY,
            registry=r,
        )
        self.queue_time = Histogram(
            "pemn_queue_time_seconds",
            "Time a request waited before its batch ran",
            ["model"],
            buckets=_LATENCY,
            registry=r,
        )
        self.batch_size = Histogram(
            "pemn_batch_size",
            "Items per executed batch (a batch may mix tasks of one backbone)",
            ["backbone"],
            buckets=_BATCH,
            registry=r,
        )
        self.compute_time = Histogram(
            "pemn_batch_compute_seconds",
            "Time to run one batch",
            ["backbone", "runtime"],
            buckets=_LATENCY,
            registry=r,
        )
        self.cache_hits = Counter(
            "pemn_cache_hits", "Task lookups served from the cache", ["model"], registry=r
        )
        self.cache_misses = Counter(
            "pemn_cache_misses", "Task lookups that materialized", ["model"], registry=r
        )
        self.evictions = Counter(
            "pemn_cache_evictions", "Tasks evicted from the cache", ["device"], registry=r
        )
        self.materialize_time = Histogram(
            "pemn_materialize_seconds",
            "Time to load by kind: backbone (generate fixed weights), packed (fetch, "
            "validate and pack a bundle), task (expand packed weights), onnx (a session)",
            ["kind"],
            buckets=_LATENCY,
            registry=r,
        )
        self.resident_tasks = Gauge(
            "pemn_resident_tasks", "Materialized tasks in the cache", ["device"], registry=r
        )
        self.resident_bytes = Gauge(
            "pemn_resident_bytes",
            "Bytes resident per device and kind (task, backbone, packed)",
            ["device", "kind"],
            registry=r,
        )
        self.queue_depth = Gauge("pemn_queue_depth", "Requests waiting for a batch", registry=r)
        self.uploads = Counter("pemn_uploads", "Bundle uploads by outcome", ["outcome"], registry=r)
        self.store_syncs = Counter(
            "pemn_store_syncs", "Store listings after a change notification", registry=r
        )

    def model_label(self, name: str) -> str:
        """``name`` as a label value: itself while fewer than ``max_models`` names
        have their own series, else ``_other``."""
        if name in self._models:
            return name
        with self._models_lock:
            if name in self._models or len(self._models) < self.max_models:
                self._models.add(name)
                return name
        return OTHER_MODELS
