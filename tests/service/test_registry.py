"""The registry in-process, over a real directory store: the packed tier is bounded
in bytes and its evictions really free memory, loads are single-flight per task and
parallel across tasks, tasks share their backbone and lane, and the channels-last
setting reaches the lane's network."""

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


def _registry(store, pool: ThreadPoolExecutor, packed_bytes: int = 1 << 40, **kw) -> Registry:  # type: ignore[no-untyped-def]
    return Registry(
        store,
        device=torch.device("cpu"),
        cache_bytes=kw.pop("cache_bytes", 1 << 30),
        packed_bytes=packed_bytes,
        default_runtime="torch",
        runtime_overrides={},
        metrics=Metrics(),
        load_executor=pool,
        **kw,
    )


def test_packed_tier_is_bounded_in_bytes_and_eviction_frees_memory(tmp_path):
    async def run() -> None:
        store = open_async_store(f"file://{tmp_path}/store")
        for i in range(4):
            await store.put(f"t{i}", make_bundle(mask_seed=i))
        with ThreadPoolExecutor(2) as pool:
            probe = _registry(store, pool)
            await probe.sync()
            await probe.task(probe.latest("t0"), "torch")
            one = probe.packed.stats().bytes
            reg = _registry(store, pool, packed_bytes=int(2.5 * one))
            await reg.sync()
            first = weakref.ref(await reg.task(reg.latest("t0"), "torch"))
            for name in ("t1", "t2"):
                await reg.task(reg.latest(name), "torch")
            stats = reg.stats()
            assert stats["packed_tasks"] == 2 and stats["packed_bytes"] <= 2.5 * one
            assert reg.packed.cached_keys() == [reg.latest(n).content_id for n in ("t1", "t2")]
            gc.collect()
            assert first() is None  # nothing else held the evicted task
            # a hit moves a task to the end: t1 survives the next insert, t2 goes
            await reg.task(reg.latest("t1"), "torch")
            await reg.task(reg.latest("t3"), "torch")
            assert reg.packed.cached_keys() == [reg.latest(n).content_id for n in ("t1", "t3")]
            assert stats["backbones"] == 1  # four tasks, one shared backbone
            assert reg.stats()["packed_evictions"] == 2
            lanes = {id(reg.lane(reg.latest(f"t{i}"), "torch")) for i in (1, 3)}
            assert len(lanes) == 1  # and one lane that batches them together
        await store.close()

    asyncio.run(run())


def test_loads_are_single_flight_per_task_and_parallel_across_tasks(tmp_path, monkeypatch):
    active: dict[str, int] = {}
    peak = {"same": 0, "total": 0}
    lock = threading.Lock()
    real_pack = Backbone.pack

    def probed(self, bundle, **kw):  # records how many loads overlap
        with lock:
            active[bundle.content_id] = active.get(bundle.content_id, 0) + 1
            peak["same"] = max(peak["same"], active[bundle.content_id])
            peak["total"] = max(peak["total"], sum(active.values()))
        time.sleep(0.2)
        try:
            return real_pack(self, bundle, **kw)
        finally:
            with lock:
                active[bundle.content_id] -= 1

    monkeypatch.setattr(Backbone, "pack", probed)

    async def run() -> None:
        store = open_async_store(f"file://{tmp_path}/store")
        await store.put("a", make_bundle(mask_seed=1))
        await store.put("b", make_bundle(mask_seed=2))
        with ThreadPoolExecutor(2) as pool:
            reg = _registry(store, pool)
            await reg.sync()
            records = [reg.latest(n) for n in ("a", "b")] * 5
            loaded = await asyncio.gather(*(reg.task(r, "torch") for r in records))
        assert len({id(x) for x in loaded}) == 2  # one object per task
        count = reg.metrics.registry.get_sample_value(
            "pemn_materialize_seconds_count", {"kind": "packed"}
        )
        assert count == 2
        await store.close()

    asyncio.run(run())
    assert peak["same"] == 1  # never two loads of one task
    assert peak["total"] == 2  # the two tasks loaded at the same time


def test_channels_last_setting_reaches_the_lane(tmp_path):
    conv = {"in_channels": 1, "image_size": 28, "width": 16, "depth": 1, "patch": 2}

    async def run() -> None:
        store = open_async_store(f"file://{tmp_path}/store")
        await store.put("conv", make_bundle("convmixer", conv))
        seen = {}
        with ThreadPoolExecutor(2) as pool:
            for flag in (True, False):
                reg = _registry(store, pool, channels_last=flag)
                await reg.sync()
                record = reg.latest("conv")
                packed = await reg.task(record, "torch")
                lane = reg.lane(record, "torch")
                outs: list[torch.Tensor] = []
                stem = lane.backbone._net.net.stem  # type: ignore[attr-defined]
                stem.register_forward_hook(lambda _m, _i, out, outs=outs: outs.append(out))
                lane.run([torch.rand(2, 1, 28, 28).numpy()], [packed])
                seen[flag] = outs[0].is_contiguous(memory_format=torch.channels_last)
        await store.close()
        assert seen == {True: True, False: False}

    asyncio.run(run())


def test_default_runtime_is_auto_on_the_cpu_and_torch_on_a_gpu(monkeypatch):
    from service.settings import Settings

    monkeypatch.delenv("PEMN_RUNTIME", raising=False)
    unset = Settings(_env_file=None)  # type: ignore[call-arg]
    assert unset.runtime is None
    assert (unset.runtime_for("cpu"), unset.runtime_for("cuda")) == ("auto", "torch")
    monkeypatch.setenv("PEMN_RUNTIME", "onnx")
    chosen = Settings(_env_file=None)  # type: ignore[call-arg]
    assert (chosen.runtime_for("cpu"), chosen.runtime_for("cuda")) == ("onnx", "onnx")
