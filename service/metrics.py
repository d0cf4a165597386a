"""Prometheus metrics of one app instance (its own registry, so several apps can
live in one process, e.g. in tests)."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterable, Iterator

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric

from service.cache import CacheStats

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
        self._caches: Callable[[], Iterable[tuple[str, CacheStats]]] = list
        r.register(_CacheCollector(lambda: self._caches()))
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

    def watch_caches(self, source: Callable[[], Iterable[tuple[str, CacheStats]]]) -> None:
        """Export the stats of the residency tiers ``source()`` yields as (tier, stats)
        at every scrape: ``pemn_cache_{items,bytes,capacity_bytes}`` gauges and
        ``pemn_cache_{hits,misses,evictions}_total`` counters, labelled by tier."""
        self._caches = source

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


class _CacheCollector:
    """The residency tiers' stats, read at scrape time (no per-request updates)."""

    def __init__(self, source: Callable[[], Iterable[tuple[str, CacheStats]]]) -> None:
        self._source = source

    def describe(self) -> list[Metric]:
        return []  # unchecked collector: its samples are known only at scrape time

    def collect(self) -> Iterator[Metric]:
        gauges = {
            "items": GaugeMetricFamily(
                "pemn_cache_items", "Entries resident per tier", labels=["tier"]
            ),
            "bytes": GaugeMetricFamily(
                "pemn_cache_bytes", "Bytes resident per tier", labels=["tier"]
            ),
            "capacity": GaugeMetricFamily(
                "pemn_cache_capacity_bytes", "Byte budget per tier", labels=["tier"]
            ),
        }
        counters = {
            "hits": CounterMetricFamily(
                "pemn_cache_hits", "Lookups served per tier", labels=["tier"]
            ),
            "misses": CounterMetricFamily(
                "pemn_cache_misses", "Lookups that loaded per tier", labels=["tier"]
            ),
            "evictions": CounterMetricFamily(
                "pemn_cache_evictions", "Entries evicted per tier", labels=["tier"]
            ),
        }
        families: dict[str, GaugeMetricFamily | CounterMetricFamily] = {**gauges, **counters}
        for tier, st in self._source():
            for key, family in families.items():
                family.add_metric([tier], float(getattr(st, key)))
        yield from gauges.values()
        yield from counters.values()
