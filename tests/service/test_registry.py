"""The registry in-process, over a real directory store: the byte-bounded LRU,
eviction that really frees memory, single-flight and parallel loads."""

from __future__ import annotations

import asyncio
import gc
import threading
import time
import weakref
from concurrent.futures import ThreadPoolExecutor

import torch

from pemn.materialize import Backbone
from pemn.store import open_async_store
from pemn.testing import make_bundle
from service.metrics import Metrics
from service.registry import Registry


def _registry(store, cache_bytes: int, pool: ThreadPoolExecutor) -> Registry:
    return Registry(
        store,
        device=torch.device("cpu"),
        cache_bytes=cache_bytes,
        default_runtime="torch",
        runtime_overrides={},
        metrics=Metrics(),
        load_executor=pool,
    )


def test_lru_is_bounded_in_bytes_and_eviction_frees_memory(tmp_path):
    async def run() -> None:
        store = open_async_store(f"file://{tmp_path}/store")
        for i in range(4):
            await store.put(f"t{i}", make_bundle(mask_seed=i))
        with ThreadPoolExecutor(2) as pool:
            probe = _registry(store, 1 << 40, pool)
            await probe.sync()
            one = (await probe.get(probe.resolve_latest("t0"))).nbytes
            reg = _registry(store, int(2.5 * one), pool)
            await reg.sync()
            first = await reg.get(reg.resolve_latest("t0"))
            module = weakref.ref(first.task.module)
            weight = weakref.ref(first.task.module.net.layers[0].weight)
            del first
            for name in ("t1", "t2"):
                await reg.get(reg.resolve_latest(name))
            stats = reg.stats()
            assert stats["tasks"] == 2 and stats["task_bytes"] <= reg.cache_bytes
            assert [v.ref.name for v in reg._cache.values()] == ["t1", "t2"]
            gc.collect()
            assert module() is None and weight() is None  # nothing else held the evicted task
            # a hit moves a task to the end: t1 survives the next insert, t2 goes
            await reg.get(reg.resolve_latest("t1"))
            await reg.get(reg.resolve_latest("t3"))
            assert [v.ref.name for v in reg._cache.values()] == ["t1", "t3"]
            assert (
                reg.metrics.registry.get_sample_value(
                    "pemn_cache_evictions_total", {"device": "cpu"}
                )
                == 2
            )
            assert stats["backbones"] == 1  # four tasks, one shared backbone
        await store.close()

    asyncio.run(run())


def test_loads_are_single_flight_per_task_and_parallel_across_tasks(tmp_path, monkeypatch):
    active: dict[str, int] = {}
    peak = {"same": 0, "total": 0}
    lock = threading.Lock()
    real_task = Backbone.task

    def probed(self, bundle, **kw):  # records how many loads overlap
        with lock:
            active[bundle.content_id] = active.get(bundle.content_id, 0) + 1
            peak["same"] = max(peak["same"], active[bundle.content_id])
            peak["total"] = max(peak["total"], sum(active.values()))
        time.sleep(0.2)
        try:
            return real_task(self, bundle, **kw)
        finally:
            with lock:
                active[bundle.content_id] -= 1

    monkeypatch.setattr(Backbone, "task", probed)

    async def run() -> None:
        store = open_async_store(f"file://{tmp_path}/store")
        await store.put("a", make_bundle(mask_seed=1))
        await store.put("b", make_bundle(mask_seed=2))
        with ThreadPoolExecutor(2) as pool:
            reg = _registry(store, 1 << 40, pool)
            await reg.sync()
            refs = [reg.resolve_latest(n) for n in ("a", "b")] * 5
            loaded = await asyncio.gather(*(reg.get(r) for r in refs))
        assert len({id(x) for x in loaded}) == 2  # one object per task
        assert (
            reg.metrics.registry.get_sample_value(
                "pemn_materialize_seconds_count", {"kind": "task"}
            )
            == 2
        )
        await store.close()

    asyncio.run(run())
    assert peak["same"] == 1  # never two loads of one task
    assert peak["total"] == 2  # the two tasks loaded at the same time


def test_channels_last_setting_reaches_the_task_weights(tmp_path):
    conv = {"in_channels": 1, "image_size": 28, "width": 16, "depth": 1, "patch": 2}

    async def run() -> None:
        store = open_async_store(f"file://{tmp_path}/store")
        await store.put("conv", make_bundle("convmixer", conv))
        strides = {}
        with ThreadPoolExecutor(2) as pool:
            for flag in (True, False):
                reg = _registry(store, 1 << 30, pool)
                reg.channels_last = flag
                await reg.sync()
                task = (await reg.get(reg.resolve_latest("conv"))).task
                stem = task.module.net.stem.weight
                strides[flag] = stem.stride()
        await store.close()
        shape = (16, 1, 2, 2)
        assert strides[True] == torch.empty(shape, memory_format=torch.channels_last).stride()
        assert strides[False] == torch.empty(shape).stride()

    asyncio.run(run())
