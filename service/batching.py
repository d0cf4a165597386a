"""Dynamic batching: requests are queued per lane (one backbone on one runtime) and
run in batches on the device's inference thread, each batch formed at the moment
the device is free to run it. Requests for different tasks of one backbone share a
queue, so they share batches: the lane runs a mixed batch in one hand-off
(``service.runtimes``).

The inference thread (one per device) repeatedly takes the lane whose oldest
request has waited longest and runs up to ``max_batch`` items of it, oldest first
whatever their tasks. Because the batch is taken
only when the device is free, everything that arrived while the previous batch ran
joins the next one, and no batch waits in line behind others while more requests
queue up. A lone request on a quiet server runs at once. Under load, when the
device has just run a batch and the next one would be smaller, it waits up to
``max_wait`` (from the moment the device became free) for the previous batch's
clients to send their next requests, unless another lane has work: the device
never idles while another lane's requests are runnable.

A request is a unit: its items stay in one batch. The queue is bounded across all
lanes (``Overloaded`` when full) and every request has a deadline
(``DeadlineExceeded``; it is then skipped if its batch has not started). A lane
answers each request on its own, so one task's failure fails only its requests.
Results go back to the event loop with ``call_soon_threadsafe``; the loop never
waits for the device.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
import time
from collections import deque
from concurrent.futures import Executor
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from service.errors import DeadlineExceeded, Overloaded, ShuttingDown
from service.metrics import Metrics
from service.runtimes import Lane

__all__ = ["Batcher"]

log = logging.getLogger("service.batching")


@dataclass
class _Item:
    x: np.ndarray  # (b, C, H, W) float32
    task: Any  # what the lane runs it with (a packed task, an ONNX session)
    model: str  # metric label of the request's model
    future: asyncio.Future[np.ndarray]
    enqueued: float = field(default_factory=time.perf_counter)


@dataclass
class _Queue:
    lane: Lane
    items: deque[_Item] = field(default_factory=deque)
    queued: int = 0  # items (not requests) waiting in this queue


def _shutting_down() -> ShuttingDown:
    return ShuttingDown("the server is shutting down")


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
        # Queues and counters are shared by the event loop (submit) and the inference
        # thread (drain); every access holds the condition's lock.
        self._cond = threading.Condition()
        self._queues: dict[tuple[str, str], _Queue] = {}  # by lane key
        self._depth = 0
        self._draining = False  # a drain job is running (or submitted) on the executor
        self._last_batch = 0  # items in the previous batch of this drain job (0: none yet)
        self._free_since = 0.0  # when the device finished that batch
        self._closed = False

    @property
    def depth(self) -> int:
        return self._depth

    async def submit(
        self, lane: Lane, task: Any, x: np.ndarray, timeout_s: float, model: str = ""
    ) -> np.ndarray:
        """Logits (b, K) of ``x`` (b, C, H, W) computed by ``lane`` with ``task``."""
        if self._closed:
            raise _shutting_down()
        if self._depth >= self.max_queue:
            raise Overloaded(f"request queue is full ({self.max_queue} waiting); retry shortly")
        item = _Item(x, task, model, asyncio.get_running_loop().create_future())
        with self._cond:
            q = self._queues.get(lane.key)
            if q is None:
                q = self._queues[lane.key] = _Queue(lane)
            q.items.append(item)
            q.queued += len(x)
            self._set_depth(+1)
            if self._draining:
                self._cond.notify()
            else:
                try:
                    self._executor.submit(self._drain)
                except RuntimeError:  # the executor is shut down
                    q.items.pop()
                    q.queued -= len(x)
                    self._set_depth(-1)
                    raise _shutting_down() from None
                self._draining = True
        try:
            return await asyncio.wait_for(asyncio.shield(item.future), timeout_s)
        except TimeoutError:
            item.future.cancel()  # skipped if its batch has not started
            raise DeadlineExceeded(
                f"no result for model {model!r} within {timeout_s * 1000:.0f} ms"
            ) from None

    def _set_depth(self, delta: int) -> None:
        self._depth += delta
        self._metrics.queue_depth.set(self._depth)

    # ---- the inference thread ----------------------------------------------------

    def _drain(self) -> None:
        """Run batches until every queue is empty (on the executor's thread)."""
        try:
            while True:
                with self._cond:
                    picked = self._pick()
                    if picked is None:
                        self._draining = False
                        self._last_batch = 0  # the device goes idle: no load any more
                        return
                try:
                    self._run(*picked)
                except Exception as exc:  # a bug here (the lane's errors are delivered)
                    log.exception("batch of %s failed outside its lane", picked[0].lane.label)
                    self._deliver(picked[1], exc)
                self._free_since = time.perf_counter()
        except BaseException:
            with self._cond:
                self._draining = False
            log.exception("batch drain loop failed")
            raise

    def _pick(self) -> tuple[_Queue, list[_Item]] | None:
        """The next batch: from the queue whose head waited longest (lock held)."""
        while not self._closed:
            oldest: _Queue | None = None
            busy = 0
            for key, q in list(self._queues.items()):
                while q.items and q.items[0].future.done():  # timed out while queued
                    self._drop(q, q.items.popleft())
                if not q.items:
                    del self._queues[key]
                    continue
                busy += 1
                if oldest is None or q.items[0].enqueued < oldest.items[0].enqueued:
                    oldest = q
            if oldest is None:
                return None
            # Under load (the device ran a bigger batch just before and did not go
            # idle), the clients of that batch are sending their next requests: wait
            # for them up to max_wait, unless another task has work.
            want = min(self._last_batch, self.max_batch)
            wait = self._free_since + self.max_wait_s - time.perf_counter()
            if busy == 1 and oldest.queued < want and wait > 0:
                self._cond.wait(wait)  # woken by every submit; then look again
                continue
            batch = self._take(oldest)
            self._last_batch = sum(len(i.x) for i in batch)
            return oldest, batch
        return None

    def _drop(self, q: _Queue, item: _Item) -> None:
        q.queued -= len(item.x)
        self._set_depth(-1)

    def _take(self, q: _Queue) -> list[_Item]:
        batch: list[_Item] = []
        n = 0
        while q.items:
            item = q.items[0]
            if item.future.done():
                self._drop(q, q.items.popleft())
                continue
            if batch and n + len(item.x) > self.max_batch:
                break
            self._drop(q, q.items.popleft())
            batch.append(item)
            n += len(item.x)
        return batch

    def _run(self, q: _Queue, batch: list[_Item]) -> None:
        lane = q.lane
        start = time.perf_counter()
        for item in batch:
            self._metrics.queue_time.labels(item.model).observe(start - item.enqueued)
        self._metrics.batch_size.labels(lane.label).observe(sum(len(i.x) for i in batch))
        try:
            results: list[np.ndarray | Exception] = lane.run(
                [i.x for i in batch], [i.task for i in batch]
            )
        except Exception as exc:
            log.exception("batch of %d requests on %s failed", len(batch), lane.label)
            self._deliver(batch, exc)
            return
        self._metrics.compute_time.labels(lane.label, lane.runtime).observe(
            time.perf_counter() - start
        )
        self._deliver(batch, results)

    def _deliver(
        self, batch: list[_Item], result: list[np.ndarray | Exception] | BaseException
    ) -> None:
        with contextlib.suppress(RuntimeError):  # a closed loop: nobody is waiting any more
            batch[0].future.get_loop().call_soon_threadsafe(_resolve, batch, result)

    # ---- shutdown ----------------------------------------------------------------

    async def close(self) -> None:
        """Stop after the batch that is running; queued requests get a 503."""
        with self._cond:
            self._closed = True
            pending = [item for q in self._queues.values() for item in q.items]
            self._queues.clear()
            self._depth = 0
            self._cond.notify_all()
        for item in pending:
            if not item.future.done():
                item.future.set_exception(_shutting_down())


def _resolve(batch: list[_Item], result: list[np.ndarray | Exception] | BaseException) -> None:
    """Hand each request its logits or its error (on the event loop)."""
    for i, item in enumerate(batch):
        if item.future.done():
            continue
        r = result if isinstance(result, BaseException) else result[i]
        if isinstance(r, BaseException):
            item.future.set_exception(r)
        else:
            item.future.set_result(r)
