"""The model registry: names known from the store, resident packed bundles, shared
backbones, and the LRU cache of materialized tasks.

- Names: the latest version of every name, refreshed from the store on start and
  on every change notification (and updated at once after an upload here).
- Packed bundles: the validated bundle of each latest version stays resident
  (1 bit per weight), so a cache miss never waits on the store.
- Backbones: one per fingerprint and device, built once (single-flight) and shared
  by every task on it; dropped when no known model needs it any more.
- ONNX graphs: exported once per backbone and re-weighted per task (see runtimes).
- Tasks: materialized weights in an LRU cache bounded in bytes; loads are
  single-flight per (content id, runtime) and run in a thread pool, so different
  tasks load in parallel. Requests hold a reference to the task they resolved,
  so an eviction or a re-upload never changes what an in-flight request runs on;
  the memory is freed when the last such request finishes.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from concurrent.futures import Executor
from dataclasses import dataclass, field
from typing import Any, TypeVar

import torch

from pemn.bundle import Bundle, read_bundle
from pemn.materialize import Backbone, Task
from pemn.store import AsyncStore, NameInfo, NotFound, VersionInfo
from service.errors import APIError
from service.metrics import Metrics
from service.runtimes import OnnxGraphs, Runner, make_runner

__all__ = ["Loaded", "ModelRef", "Registry"]

log = logging.getLogger("service.registry")
T = TypeVar("T")


@dataclass(frozen=True)
class ModelRef:
    """What a request resolved to: one immutable version of one name."""

    name: str
    version: int
    content_id: str


@dataclass
class Loaded:
    """A materialized task with its runtime, ready to run batches."""

    ref: ModelRef
    runtime: str
    task: Task
    runner: Runner
    labels: list[str]
    input_shape: tuple[int, int, int]
    nbytes: int
    loaded_at: float = field(default_factory=time.time)

    @property
    def key(self) -> tuple[str, str]:
        return (self.ref.content_id, self.runtime)


class _SingleFlight:
    """Concurrent callers of ``run(key, fn)`` with the same key share one execution.

    The work runs as its own task, so a caller that gives up (timeout, client gone)
    never cancels a load other callers are waiting for."""

    def __init__(self) -> None:
        self._inflight: dict[Any, asyncio.Task[Any]] = {}

    async def run(self, key: Any, fn: Callable[[], Awaitable[T]]) -> T:
        task = self._inflight.get(key)
        if task is None:

            async def work() -> T:
                try:
                    return await fn()
                finally:
                    self._inflight.pop(key, None)

            task = asyncio.ensure_future(work())
            task.add_done_callback(
                lambda t: t.cancelled() or t.exception()
            )  # retrieved even if all callers left
            self._inflight[key] = task
        result: T = await asyncio.shield(task)
        return result


class Registry:
    def __init__(
        self,
        store: AsyncStore,
        *,
        device: torch.device,
        cache_bytes: int,
        default_runtime: str,
        runtime_overrides: dict[str, str],
        metrics: Metrics,
        load_executor: Executor,
        inference_threads: int | None = None,
        channels_last: bool = True,
    ) -> None:
        self.store = store
        self.device = device
        self.cache_bytes = cache_bytes
        self.default_runtime = default_runtime
        self.runtime_overrides = runtime_overrides
        self.metrics = metrics
        self._pool = load_executor
        self._threads = inference_threads
        self.channels_last = channels_last
        self.names: dict[str, NameInfo] = {}
        self._bundles: dict[str, Bundle] = {}  # content id -> validated bundle (latest versions)
        self._backbones: dict[str, Backbone] = {}  # fingerprint -> backbone on self.device
        self._onnx = OnnxGraphs()  # one exported graph per backbone, re-weighted per task
        self._cache: OrderedDict[tuple[str, str], Loaded] = OrderedDict()
        self._cache_used = 0
        self._task_flight = _SingleFlight()
        self._backbone_flight = _SingleFlight()
        self._bundle_flight = _SingleFlight()
        self.synced_epoch: str | None = None  # the store's change marker at the last sync

    # ---- names -------------------------------------------------------------

    async def sync(self) -> None:
        """Re-read every name's latest version from the store."""
        marker = await self.store.marker()  # read first: a change after it is seen next time
        listing = await self.store.list()
        self.names = {info.name: info for info in listing}
        self.synced_epoch = marker
        live = {info.content_id for info in listing}
        for cid in [c for c in self._bundles if c not in live]:
            del self._bundles[cid]
        self._drop_unused_backbones()
        self.metrics.store_syncs.inc()
        self._publish_gauges()

    def note_upload(self, info: NameInfo) -> None:
        """Serve an upload made through this server at once (the watcher confirms it)."""
        old = self.names.get(info.name)
        if old is None or info.version >= old.version:
            self.names[info.name] = info

    def forget(self, name: str) -> None:
        info = self.names.pop(name, None)
        if info is not None:
            self._bundles.pop(info.content_id, None)
            self._drop_unused_backbones()
            self._publish_gauges()

    def resolve_latest(self, name: str) -> ModelRef:
        info = self.names.get(name)
        if info is None:
            raise APIError(404, "model.not_found", f"model {name!r} not found")
        return ModelRef(info.name, info.version, info.content_id)

    async def resolve(self, name: str, version: int | None) -> ModelRef:
        if version is None:
            return self.resolve_latest(name)
        info = self.names.get(name)
        if info is not None and info.version == version:
            return ModelRef(name, version, info.content_id)
        if info is None:
            raise APIError(404, "model.not_found", f"model {name!r} not found")
        for v in await self.versions(name):
            if v.version == version:
                return ModelRef(name, version, v.content_id)
        raise APIError(
            404, "model.version_not_found", f"version {version} of model {name!r} not found"
        )

    async def versions(self, name: str) -> list[VersionInfo]:
        try:
            return await self.store.versions(name)
        except NotFound:
            raise APIError(404, "model.not_found", f"model {name!r} not found") from None

    # ---- loading -------------------------------------------------------------

    def runtime_for(self, name: str) -> str:
        return self.runtime_overrides.get(name, self.default_runtime)

    def cached_by_name(self, name: str) -> list[Loaded]:
        return [v for v in self._cache.values() if v.ref.name == name]

    async def get(self, ref: ModelRef, runtime: str | None = None) -> Loaded:
        """The materialized task of ``ref`` (cache hit, or one shared load)."""
        runtime = runtime or self.runtime_for(ref.name)
        key = (ref.content_id, runtime)
        hit = self._cache.get(key)
        if hit is not None:
            self._cache.move_to_end(key)
            self.metrics.cache_hits.labels(self.metrics.model_label(ref.name)).inc()
            return hit
        self.metrics.cache_misses.labels(self.metrics.model_label(ref.name)).inc()
        return await self._task_flight.run(key, lambda: self._load(ref, runtime))

    async def _bundle(self, ref: ModelRef) -> Bundle:
        bundle = self._bundles.get(ref.content_id)
        if bundle is not None:
            return bundle

        async def fetch() -> Bundle:
            # Versions are never reused, so (name, version) names these bytes; the
            # content id is checked all the same (the store verified the sha256).
            got = await self.store.get(ref.name, ref.version)
            if got.content_id != ref.content_id:
                raise NotFound(
                    f"version {ref.version} holds {got.content_id}, not {ref.content_id}",
                    store=self.store.url,
                    key=f"{ref.name}@{ref.version}",
                )
            b = await self._in_pool(read_bundle, got.data, verify=False)
            latest = self.names.get(ref.name)
            if latest is not None and latest.content_id == ref.content_id:
                self._bundles[ref.content_id] = b  # only latest versions stay resident
            return b

        return await self._bundle_flight.run(ref.content_id, fetch)

    async def _backbone(self, bundle: Bundle) -> Backbone:
        bb = self._backbones.get(bundle.fingerprint)
        if bb is not None:
            return bb

        async def build() -> Backbone:
            start = time.perf_counter()
            b = await self._in_pool(
                Backbone.for_bundle, bundle, self.device, channels_last=self.channels_last
            )
            self.metrics.materialize_time.labels("backbone").observe(time.perf_counter() - start)
            self._backbones[b.fingerprint] = b
            log.info(
                "built backbone %s (%s, %.1f MB) on %s",
                b.fingerprint[:19],
                b.arch,
                b.nbytes / 1e6,
                self.device,
            )
            return b

        return await self._backbone_flight.run(bundle.fingerprint, build)

    async def _load(self, ref: ModelRef, runtime: str) -> Loaded:
        start = time.perf_counter()
        bundle = await self._bundle(ref)
        backbone = await self._backbone(bundle)
        task = await self._in_pool(backbone.task, bundle)
        runner = await self._in_pool(make_runner, task, runtime, self._threads, self._onnx)
        m = bundle.manifest
        loaded = Loaded(
            ref,
            runtime,
            task,
            runner,
            list(m.labels),
            m.input.shape,
            task.nbytes + runner.nbytes,
        )
        self.metrics.materialize_time.labels("task").observe(time.perf_counter() - start)
        self._insert(loaded)
        return loaded

    def _insert(self, loaded: Loaded) -> None:
        self._cache[loaded.key] = loaded
        self._cache_used += loaded.nbytes
        while self._cache_used > self.cache_bytes and len(self._cache) > 1:
            _, old = self._cache.popitem(last=False)
            self._cache_used -= old.nbytes
            self.metrics.evictions.labels(str(self.device)).inc()
            log.info("evicted %s v%d (%s)", old.ref.name, old.ref.version, old.runtime)
        self._publish_gauges()

    def evict(self, content_id: str) -> int:
        """Drop every cached runtime of ``content_id``; returns how many."""
        keys = [k for k in self._cache if k[0] == content_id]
        for k in keys:
            self._cache_used -= self._cache.pop(k).nbytes
        self._publish_gauges()
        return len(keys)

    def _drop_unused_backbones(self) -> None:
        needed = (
            {b.fingerprint for b in self._bundles.values()}
            | {info.summary.get("fingerprint") for info in self.names.values()}
            | {v.task.fingerprint for v in self._cache.values()}
        )
        for fp in [fp for fp in self._backbones if fp not in needed]:
            del self._backbones[fp]
        self._onnx.drop_unused({fp for fp in needed if fp})

    async def _in_pool(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._pool, lambda: fn(*args, **kwargs))

    # ---- introspection -------------------------------------------------------

    def _publish_gauges(self) -> None:
        dev = str(self.device)
        self.metrics.resident_tasks.labels(dev).set(len(self._cache))
        self.metrics.resident_bytes.labels(dev, "task").set(self._cache_used)
        self.metrics.resident_bytes.labels(dev, "backbone").set(
            sum(b.nbytes for b in self._backbones.values())
        )
        self.metrics.resident_bytes.labels("cpu", "packed").set(
            sum(b.size for b in self._bundles.values())
        )

    def stats(self) -> dict[str, Any]:
        return {
            "device": str(self.device),
            "tasks": len(self._cache),
            "task_bytes": self._cache_used,
            "cache_bytes": self.cache_bytes,
            "backbones": len(self._backbones),
            "backbone_bytes": sum(b.nbytes for b in self._backbones.values()),
            "packed_bundles": len(self._bundles),
            "packed_bytes": sum(b.size for b in self._bundles.values()),
        }
