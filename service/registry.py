"""The registry: the catalog of models kept in sync with the store, and the tiers of
residency that serve it.

- Catalog: a typed record of every name's latest version (``service.catalog``),
  refreshed from the store on start and on every change notification.
- Packed tier (``ByteLRU``, bytes-bounded): every task that has been asked for stays
  resident as its packed masks and norm state (1 bit per weight, ``PackedTask``),
  so a request never waits on the store twice. Loading a task fetches its bundle,
  validates it, builds its backbone if needed and checks the prototype digest.
- Backbones: one per fingerprint, built once (single-flight) in the load pool and
  shared by every task on it, with its lane (the one network that runs any of its
  tasks, ``service.runtimes``); dropped when no known model needs it any more.
- Materialized tiers, bytes-bounded, may be zero: the torch lanes keep the hot
  tasks' expanded weights (on the inference thread); the ONNX tier keeps one
  session per hot task (exported once per backbone, re-weighted per task).
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections.abc import Callable
from concurrent.futures import Executor
from typing import Any, TypeVar

import torch

from pemn.bundle import Bundle, BundleError, inspect_bundle, read_bundle
from pemn.materialize import Backbone, MixedMode, PackedTask
from pemn.store import AsyncStore, NameInfo, NotFound, VersionInfo
from service.cache import ByteLRU, CacheStats
from service.catalog import Catalog, ModelRecord
from service.errors import ModelNotFound, Unservable
from service.metrics import Metrics
from service.runtimes import Lane, OnnxGraphs, OnnxLane, OnnxRunner, TorchLane

__all__ = ["Registry"]

log = logging.getLogger("service.registry")
T = TypeVar("T")
_OLD_RECORDS = 256  # records of explicitly requested older versions kept


class Registry:
    def __init__(
        self,
        store: AsyncStore,
        *,
        device: torch.device,
        cache_bytes: int,
        packed_bytes: int,
        default_runtime: str,
        runtime_overrides: dict[str, str],
        metrics: Metrics,
        load_executor: Executor,
        inference_threads: int | None = None,
        channels_last: bool = True,
        mixed_mode: MixedMode | None = None,
        onnx_hot_rate: float = 20.0,
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
        self.mixed_mode = mixed_mode
        self.catalog = Catalog()
        self._old: dict[tuple[str, int], ModelRecord] = {}
        self.packed: ByteLRU[str, PackedTask] = ByteLRU("packed", packed_bytes, _packed_size)
        self.backbones: ByteLRU[str, Backbone] = ByteLRU("backbones", 1 << 62, lambda b: b.nbytes)
        self._lanes: dict[tuple[str, str], Lane] = {}
        self._onnx_graphs = OnnxGraphs()
        self.onnx: ByteLRU[str, OnnxRunner] = ByteLRU("onnx", cache_bytes, lambda r: r.nbytes)
        self.synced_epoch: str | None = None  # the store's change marker at the last sync
        # runtime auto: request rates per task, and the ONNX sessions being built
        self._heat = _Heat(onnx_hot_rate)
        self._building: set[str] = set()
        self._build_slot = asyncio.Semaphore(1)
        self._background: set[asyncio.Future[None]] = set()
        metrics.watch_caches(self._tier_stats)

    def _task_tiers(self) -> list[ByteLRU[str, Any]]:
        """Every tier that holds tasks by content id."""
        return [self.packed, self.onnx, *(lane.hot for lane in self._torch_lanes())]

    def _torch_lanes(self) -> list[TorchLane]:
        return [lane for lane in list(self._lanes.values()) if isinstance(lane, TorchLane)]

    def _tier_stats(self) -> list[tuple[str, CacheStats]]:
        hot = [lane.hot.stats() for lane in self._torch_lanes()]
        total = CacheStats(
            sum(s.items for s in hot),
            sum(s.bytes for s in hot),
            self.cache_bytes,
            sum(s.hits for s in hot),
            sum(s.misses for s in hot),
            sum(s.evictions for s in hot),
            sum(s.load_seconds for s in hot),
        )
        return [
            ("packed", self.packed.stats()),
            ("hot", total),
            ("onnx", self.onnx.stats()),
            ("backbones", self.backbones.stats()),
        ]

    # ---- the catalog --------------------------------------------------------

    async def sync(self) -> None:
        """Re-read every name's latest version from the store."""
        marker = await self.store.marker()  # read first: a change after it is seen next time
        listing = await self.store.list()
        self.catalog.replace_all(listing)
        self.synced_epoch = marker
        live = {r.content_id for r in self.catalog.records()}
        for (
            tier
        ) in self._task_tiers():  # versions no longer latest (requests in flight keep theirs)
            for cid in tier.cached_keys():
                if cid not in live:
                    tier.discard(cid)
        self._drop_unused()
        self.metrics.store_syncs.inc()
        self._publish_gauges()

    def note_upload(self, info: NameInfo) -> ModelRecord:
        """Serve an upload made through this server at once (the watcher confirms it)."""
        return self.catalog.upsert(info)

    def forget(self, name: str) -> None:
        record = self.catalog.remove(name)
        if record is not None:
            for tier in self._task_tiers():
                tier.discard(record.content_id)
            self._drop_unused()
            self._publish_gauges()

    def latest(self, name: str) -> ModelRecord:
        return self.catalog.latest(name)

    async def resolve(self, name: str, version: int | None) -> ModelRecord:
        """The record of ``name`` (latest, or ``version``). An older version's record
        is read from its bundle (the catalog holds latest versions only)."""
        latest = self.catalog.latest(name)
        if version is None or version == latest.version:
            return latest
        hit = self._old.get((name, version))
        if hit is not None:
            return hit
        for v in await self.versions(name):
            if v.version == version:
                data = await self._bytes(name, v.version, v.content_id)
                summary = await self._in_pool(inspect_bundle, data, verify=False)
                info = NameInfo(
                    name=name,
                    version=v.version,
                    content_id=v.content_id,
                    size=v.size,
                    created_at=v.created_at,
                    summary=summary,
                    versions=1,
                )
                record = ModelRecord.from_info(info)
                if len(self._old) >= _OLD_RECORDS:
                    self._old.pop(next(iter(self._old)))
                self._old[(name, version)] = record
                return record
        raise ModelNotFound(
            f"version {version} of model {name!r} not found", "model.version_not_found"
        )

    async def versions(self, name: str) -> list[VersionInfo]:
        try:
            return await self.store.versions(name)
        except NotFound:
            raise ModelNotFound(f"model {name!r} not found") from None

    def runtime_for(self, name: str) -> str:
        return self.runtime_overrides.get(name, self.default_runtime)

    # ---- residency -------------------------------------------------------------

    async def task(self, record: ModelRecord, runtime: str) -> PackedTask | OnnxRunner:
        """What the batcher needs to run ``record`` on ``runtime``: its packed form
        (torch: the lane materializes it), or its ONNX session (onnx; auto: when the
        task is hot enough to have one, see ``_heat``)."""
        cid = record.content_id
        packed = await self.packed.get(cid, lambda _: self._load_packed(record))
        if runtime == "torch":
            return packed
        if runtime == "onnx":
            return await self.onnx.get(cid, lambda _: self._load_onnx(packed))
        session = self.onnx.peek(cid)
        if session is not None:
            return session
        if self._heat.hot(cid) and cid not in self._building:
            self._build_in_background(packed)
        return packed

    def _build_in_background(self, packed: PackedTask) -> None:
        """Give a hot task its ONNX session without making any request wait for it
        (runtime auto); one build at a time, so serving keeps the CPU."""
        cid = packed.content_id
        self._building.add(cid)

        async def build() -> None:
            try:
                async with self._build_slot:
                    if self.onnx.peek(cid) is None and cid in self.packed:
                        await self.onnx.get(cid, lambda _: self._load_onnx(packed))
            except Exception:
                log.exception("ONNX session of task %s failed; it stays on torch", cid[:19])
            finally:
                self._building.discard(cid)

        task = asyncio.ensure_future(build())
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    async def _bytes(self, name: str, version: int, content_id: str) -> bytes:
        """The verified bytes of ``name`` v``version``. Versions are never reused, so
        (name, version) names these bytes; the content id is checked all the same."""
        got = await self.store.get(name, version)
        if got.content_id != content_id:
            raise NotFound(
                f"version {version} holds {got.content_id}, not {content_id}",
                store=self.store.url,
                key=f"{name}@{version}",
            )
        return got.data

    async def _load_packed(self, record: ModelRecord) -> PackedTask:
        start = time.perf_counter()
        data = await self._bytes(record.name, record.version, record.content_id)
        try:
            bundle = await self._in_pool(read_bundle, data, verify=False)
            backbone = await self.backbone(bundle)
            packed = await self._in_pool(backbone.pack, bundle)
        except BundleError as exc:
            log.error("model %s v%d cannot be served: %s", record.name, record.version, exc)
            raise Unservable(
                f"model {record.name!r} v{record.version} cannot be served: invalid bundle: {exc}",
                exc.code,
            ) from None
        self.metrics.materialize_time.labels("packed").observe(time.perf_counter() - start)
        return packed

    async def _load_onnx(self, packed: PackedTask) -> OnnxRunner:
        start = time.perf_counter()
        backbone = self.backbones.peek(packed.fingerprint)
        if backbone is None:
            raise Unservable(f"the backbone of task {packed.content_id[:19]} is gone; retry")
        runner = await self._in_pool(
            OnnxRunner.build, backbone, packed, self._threads, self._onnx_graphs
        )
        seconds = time.perf_counter() - start
        self.metrics.materialize_time.labels("onnx").observe(seconds)
        log.info(
            "built ONNX session of task %s (backbone %s) in %.2f s",
            packed.content_id[:19],
            backbone.arch,
            seconds,
        )
        return runner

    async def backbone(self, bundle: Bundle) -> Backbone:
        async def build(_: str) -> Backbone:
            start = time.perf_counter()
            b = await self._in_pool(
                Backbone.for_bundle, bundle, self.device, channels_last=self.channels_last
            )
            self.metrics.materialize_time.labels("backbone").observe(time.perf_counter() - start)
            log.info(
                "built backbone %s (%s, %.1f MB) on %s",
                b.fingerprint[:19],
                b.arch,
                b.nbytes / 1e6,
                self.device,
            )
            return b

        return await self.backbones.get(bundle.fingerprint, build)

    def lane(self, record: ModelRecord, runtime: str) -> Lane:
        """The lane that batches ``record``'s requests with its backbone's other tasks
        (its backbone is resident: ``task`` was awaited first)."""
        key = (record.fingerprint, runtime)
        lane = self._lanes.get(key)
        if lane is None:
            if runtime == "onnx":
                lane = OnnxLane(key, record.arch)
            else:  # torch, or auto (torch with sessions for the hot tasks)
                backbone = self.backbones.peek(record.fingerprint)
                if backbone is None:
                    raise Unservable(f"the backbone of model {record.name!r} is gone; retry")
                lane = TorchLane(
                    key,
                    backbone,
                    self.cache_bytes,
                    self.mixed_mode,
                    self.metrics.materialize_time.labels("task").observe,
                    runtime,
                )
            self._lanes[key] = lane
        return lane

    def _drop_unused(self) -> None:
        needed = self.catalog.fingerprints() | {p.fingerprint for p in self._packed_values()}
        for fp in self.backbones.cached_keys():
            if fp not in needed:
                self.backbones.discard(fp)
        for key in [k for k in self._lanes if k[0] not in needed]:
            del self._lanes[key]
        self._onnx_graphs.drop_unused(needed)

    def _packed_values(self) -> list[PackedTask]:
        return [
            v for v in (self.packed.peek(k) for k in self.packed.cached_keys()) if v is not None
        ]

    async def _in_pool(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._pool, lambda: fn(*args, **kwargs))

    # ---- introspection -------------------------------------------------------

    def residency(self, content_id: str) -> dict[str, Any]:
        """Where one task is resident: packed, and which materialized tiers."""
        hot = [
            {"runtime": key[1], "device": str(self.device), "bytes": lane.task_bytes}
            for key, lane in self._lanes.items()
            if lane.holds(content_id)
        ]
        if content_id in self.onnx:
            runner = self.onnx.peek(content_id)
            hot.append(
                {
                    "runtime": "onnx",
                    "device": str(self.device),
                    "bytes": runner.nbytes if runner else 0,
                }
            )
        return {"packed": content_id in self.packed, "materialized": hot}

    def _publish_gauges(self) -> None:
        s = self.stats()
        dev = str(self.device)
        self.metrics.resident_tasks.labels(dev).set(s["tasks"])
        self.metrics.resident_bytes.labels(dev, "task").set(s["task_bytes"])
        self.metrics.resident_bytes.labels(dev, "backbone").set(s["backbone_bytes"])
        self.metrics.resident_bytes.labels("cpu", "packed").set(s["packed_bytes"])

    def stats(self) -> dict[str, Any]:
        # an ONNX lane holds no tasks itself: its sessions are the onnx tier, counted once
        lanes = [s for s in (lane.stats() for lane in self._lanes.values()) if "items" in s]
        packed, onnx, backbones = self.packed.stats(), self.onnx.stats(), self.backbones.stats()
        return {
            "device": str(self.device),
            "tasks": sum(s["items"] for s in lanes) + onnx.items,
            "task_bytes": sum(s["bytes"] for s in lanes) + onnx.bytes,
            "cache_bytes": self.cache_bytes,
            "evictions": sum(s["evictions"] for s in lanes) + onnx.evictions + packed.evictions,
            "backbones": backbones.items,
            "backbone_bytes": backbones.bytes,
            "packed_tasks": packed.items,
            "packed_bytes": packed.bytes,
            "packed_capacity": packed.capacity,
            "packed_evictions": packed.evictions,
            "lanes": {f"{k[0][:19]}/{k[1]}": lane.stats() for k, lane in self._lanes.items()},
        }


class _Heat:
    """Requests per second of each task, as an exponentially decaying count (time
    constant ``tau`` seconds): a task is hot at ``rate`` requests per second or more.
    A task in a round-robin over 1,000 tasks at 300 requests per second has 0.3."""

    def __init__(self, rate: float, tau: float = 5.0) -> None:
        self.rate, self.tau = rate, tau
        self._last: dict[str, tuple[float, float]] = {}  # content id -> (time, rate)

    def hot(self, cid: str) -> bool:
        now = time.monotonic()
        t, r = self._last.get(cid, (now, 0.0))
        r = r * math.exp(-(now - t) / self.tau) + 1.0 / self.tau
        if len(self._last) > 100_000:  # bounded: forget the coldest half
            keep = sorted(self._last.items(), key=lambda kv: kv[1][1])[50_000:]
            self._last = dict(keep)
        self._last[cid] = (now, r)
        return r >= self.rate


def _packed_size(p: PackedTask) -> int:
    return p.nbytes + _PACKED_OVERHEAD


# Python objects of one PackedTask besides its arrays (measured with tracemalloc in
# bench/bench_memory.py): counted so the packed budget is honest for tiny bundles.
_PACKED_OVERHEAD = 1024
