"""Dynamic batching: requests are queued per task and executed in batches.

Each materialized task (content id + runtime) has its own queue and, while the
queue is non-empty, one worker coroutine. A worker takes the oldest request, waits
up to ``max_wait`` for more to arrive (or until ``max_batch`` items are queued),
concatenates them and runs the batch on the inference executor (one thread per
device: batches of different tasks run one after another, with no weight copies
between them). A request is a unit: its items stay in one batch. The queue is
bounded across all tasks (503 with Retry-After when full) and every request has a
deadline (504 when exceeded; it is then skipped if its batch has not started).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from concurrent.futures import Executor
from dataclasses import dataclass, field

import numpy as np

from service.errors import APIError
from service.metrics import Metrics
from service.registry import Loaded

__all__ = ["Batcher"]

log = logging.getLogger("service.batching")


@dataclass
class _Item:
    x: np.ndarray  # (b, C, H, W) float32
    future: asyncio.Future[np.ndarray]
    enqueued: float = field(default_factory=time.perf_counter)


@dataclass
class _Queue:
    loaded: Loaded
    items: deque[_Item] = field(default_factory=deque)
    arrived: asyncio.Event = field(default_factory=asyncio.Event)
    worker: asyncio.Task[None] | None = None


class Batcher:
    def __init__(
        self,
        executor: Executor,
        metrics: Metrics,
        *,
        max_batch: int,
        max_wait_s: float,
        max_queue: int,
    ) -> None:
        self._executor = executor
        self._metrics = metrics
        self.max_batch = max_batch
        self.max_wait_s = max_wait_s
        self.max_queue = max_queue
        self._queues: dict[tuple[str, str], _Queue] = {}
        self._depth = 0
        self._closed = False

    @property
    def depth(self) -> int:
        return self._depth

    async def submit(self, loaded: Loaded, x: np.ndarray, timeout_s: float) -> np.ndarray:
        """Logits (b, K) of ``x`` (b, C, H, W) computed by ``loaded``."""
        if self._closed:
            raise APIError(
                503, "server.shutting_down", "the server is shutting down", {"Retry-After": "1"}
            )
        if self._depth >= self.max_queue:
            raise APIError(
                503,
                "server.overloaded",
                f"request queue is full ({self.max_queue} waiting); retry shortly",
                {"Retry-After": "1"},
            )
        item = _Item(x, asyncio.get_running_loop().create_future())
        q = self._queues.get(loaded.key)
        if q is None:  # (a queue that exists runs the same content and runtime)
            q = self._queues[loaded.key] = _Queue(loaded)
        q.items.append(item)
        self._set_depth(+1)
        q.arrived.set()
        if q.worker is None or q.worker.done():
            q.worker = asyncio.create_task(self._work(loaded.key, q))
        try:
            return await asyncio.wait_for(asyncio.shield(item.future), timeout_s)
        except TimeoutError:
            item.future.cancel()  # the worker skips it if its batch has not started
            raise APIError(
                504,
                "request.timeout",
                f"no result for model {loaded.ref.name!r} within {timeout_s * 1000:.0f} ms",
            ) from None

    def _set_depth(self, delta: int) -> None:
        self._depth += delta
        self._metrics.queue_depth.set(self._depth)

    def _take(self, q: _Queue) -> list[_Item]:
        batch: list[_Item] = []
        n = 0
        while q.items:
            item = q.items[0]
            if item.future.done():  # timed out while queued
                q.items.popleft()
                self._set_depth(-1)
                continue
            if batch and n + len(item.x) > self.max_batch:
                break
            q.items.popleft()
            self._set_depth(-1)
            batch.append(item)
            n += len(item.x)
        return batch

    def _queued_items(self, q: _Queue) -> int:
        return sum(len(i.x) for i in q.items)

    async def _work(self, key: tuple[str, str], q: _Queue) -> None:
        loop = asyncio.get_running_loop()
        name = q.loaded.ref.name
        try:
            while q.items:
                deadline = q.items[0].enqueued + self.max_wait_s
                while self._queued_items(q) < self.max_batch:
                    remaining = deadline - time.perf_counter()
                    if remaining <= 0:
                        break
                    q.arrived.clear()
                    try:
                        await asyncio.wait_for(q.arrived.wait(), remaining)
                    except TimeoutError:
                        break
                batch = self._take(q)
                if not batch:
                    continue
                now = time.perf_counter()
                for item in batch:
                    self._metrics.queue_time.labels(name).observe(now - item.enqueued)
                x = batch[0].x if len(batch) == 1 else np.concatenate([i.x for i in batch])
                self._metrics.batch_size.labels(name).observe(len(x))
                try:
                    logits = await loop.run_in_executor(self._executor, q.loaded.runner, x)
                except Exception as exc:
                    log.exception(
                        "batch of %d for %s v%d failed", len(x), name, q.loaded.ref.version
                    )
                    for item in batch:
                        if not item.future.done():
                            item.future.set_exception(exc)
                    continue
                self._metrics.compute_time.labels(name, q.loaded.runtime).observe(
                    time.perf_counter() - now
                )
                pos = 0
                for item in batch:
                    n = len(item.x)
                    if not item.future.done():
                        item.future.set_result(logits[pos : pos + n])
                    pos += n
        finally:
            if not q.items and self._queues.get(key) is q:
                del self._queues[key]

    async def close(self) -> None:
        self._closed = True
        workers = [q.worker for q in self._queues.values() if q.worker is not None]
        for w in workers:
            w.cancel()
        await asyncio.gather(*workers, return_exceptions=True)
