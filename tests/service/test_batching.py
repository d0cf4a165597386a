"""The batcher in-process, with runners that record what they were given: batches
are formed when the device is free (late binding), a lone request never waits,
tasks are served oldest first, and deadlines, failures and shutdown reach the
right requests."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest

from service.batching import Batcher
from service.errors import APIError
from service.metrics import Metrics
from service.registry import Loaded, ModelRef


class _Runner:
    """Logits = the first pixel of each item, repeated over 3 classes; every call is
    logged as (task, rows); ``gate`` (when set) holds a call until it is opened."""

    name = "torch"
    nbytes = 0

    def __init__(self, task: str, log: list[tuple[str, int]], gate: threading.Event | None = None):
        self.task, self.log, self.gate = task, log, gate
        self.started = threading.Event()

    def __call__(self, x: np.ndarray) -> np.ndarray:
        self.log.append((self.task, len(x)))
        self.started.set()
        if self.gate is not None:
            assert self.gate.wait(10)
        return np.repeat(x.reshape(len(x), -1)[:, :1], 3, axis=1)


def _loaded(task: str, runner: Callable[[np.ndarray], np.ndarray]) -> Loaded:
    ref = ModelRef(task, 1, f"sha256:{task}")
    return Loaded(ref, "torch", None, runner, ["a", "b", "c"], (1, 1, 1), 0)  # type: ignore[arg-type]


def _x(value: float, n: int = 1) -> np.ndarray:
    return np.full((n, 1, 1, 1), value, np.float32)


def _run(body: Callable[[Batcher], object], **kw: float) -> None:
    async def main() -> None:
        with ThreadPoolExecutor(1) as pool:
            batcher = Batcher(
                pool,
                Metrics(),
                max_batch=int(kw.get("max_batch", 64)),
                max_wait_s=kw.get("max_wait_s", 0.5),
                max_queue=int(kw.get("max_queue", 100)),
            )
            try:
                await body(batcher)  # type: ignore[misc]
            finally:
                await batcher.close()

    asyncio.run(main())


def test_a_lone_request_runs_at_once_whatever_max_wait():
    log: list[tuple[str, int]] = []
    a = _loaded("a", _Runner("a", log))

    async def body(b: Batcher) -> None:
        for i in range(3):
            start = time.perf_counter()
            out = await b.submit(a, _x(i), 5)
            assert time.perf_counter() - start < 0.25  # max_wait is 0.5 s
            np.testing.assert_array_equal(out, [[i, i, i]])

    _run(body, max_wait_s=0.5)
    assert log == [("a", 1)] * 3


def test_requests_arriving_during_a_batch_join_the_next_one():
    log: list[tuple[str, int]] = []
    gate = threading.Event()
    runner = _Runner("a", log, gate)
    a = _loaded("a", runner)

    async def body(b: Batcher) -> None:
        first = asyncio.ensure_future(b.submit(a, _x(0), 5))
        while not runner.started.is_set():
            await asyncio.sleep(0.001)
        rest = [asyncio.ensure_future(b.submit(a, _x(i, n=2), 5)) for i in range(1, 6)]
        await asyncio.sleep(0.05)
        assert b.depth == 5
        gate.set()
        assert (await first).tolist() == [[0, 0, 0]]
        for i, fut in enumerate(rest, start=1):
            assert (await fut).tolist() == [[i] * 3] * 2  # each request gets its own rows

    _run(body)
    assert log == [("a", 1), ("a", 10)]


def test_max_batch_splits_and_a_request_stays_whole():
    log: list[tuple[str, int]] = []
    gate = threading.Event()
    runner = _Runner("a", log, gate)
    a = _loaded("a", runner)

    async def body(b: Batcher) -> None:
        first = asyncio.ensure_future(b.submit(a, _x(0), 5))
        while not runner.started.is_set():
            await asyncio.sleep(0.001)
        sizes = [3, 3, 3, 1]
        rest = [asyncio.ensure_future(b.submit(a, _x(i, n), 5)) for i, n in enumerate(sizes)]
        await asyncio.sleep(0.05)
        gate.set()
        await asyncio.gather(first, *rest)

    _run(body, max_batch=8, max_wait_s=0)
    assert log == [("a", 1), ("a", 6), ("a", 4)]


def test_tasks_are_served_oldest_first_and_each_batch_holds_one_task():
    log: list[tuple[str, int]] = []
    gate = threading.Event()
    blocker = _Runner("x", log, gate)
    x = _loaded("x", blocker)
    a, b_ = _loaded("a", _Runner("a", log)), _loaded("b", _Runner("b", log))

    async def body(b: Batcher) -> None:
        first = asyncio.ensure_future(b.submit(x, _x(9), 5))
        while not blocker.started.is_set():
            await asyncio.sleep(0.001)
        order = [b_, a, b_, a, a]
        futs = []
        for i, task in enumerate(order):
            futs.append(asyncio.ensure_future(b.submit(task, _x(i), 5)))
            await asyncio.sleep(0.002)
        gate.set()
        results = await asyncio.gather(first, *futs)
        for i, out in enumerate(results[1:]):
            assert out.tolist() == [[i] * 3]

    _run(body)
    assert log == [("x", 1), ("b", 2), ("a", 3)]


def test_a_request_past_its_deadline_is_504_and_skipped():
    log: list[tuple[str, int]] = []
    gate = threading.Event()
    runner = _Runner("a", log, gate)
    a = _loaded("a", runner)

    async def body(b: Batcher) -> None:
        first = asyncio.ensure_future(b.submit(a, _x(0), 5))
        while not runner.started.is_set():
            await asyncio.sleep(0.001)
        with pytest.raises(APIError) as exc:
            await b.submit(a, _x(1), 0.05)
        assert exc.value.status == 504
        late = asyncio.ensure_future(b.submit(a, _x(2), 5))
        await asyncio.sleep(0.01)
        gate.set()
        await first
        assert (await late).tolist() == [[2, 2, 2]]

    _run(body)
    assert log == [("a", 1), ("a", 1)]  # the timed-out request never ran


def test_a_failing_batch_fails_its_requests_only():
    log: list[tuple[str, int]] = []

    def broken(x: np.ndarray) -> np.ndarray:
        raise RuntimeError("device on fire")

    bad, good = _loaded("bad", broken), _loaded("good", _Runner("good", log))

    async def body(b: Batcher) -> None:
        with pytest.raises(RuntimeError, match="on fire"):
            await b.submit(bad, _x(0), 5)
        assert (await b.submit(good, _x(1), 5)).tolist() == [[1, 1, 1]]

    _run(body)


def test_a_full_queue_is_503_and_close_answers_queued_requests():
    log: list[tuple[str, int]] = []
    gate = threading.Event()
    runner = _Runner("a", log, gate)
    a = _loaded("a", runner)

    async def body(b: Batcher) -> None:
        first = asyncio.ensure_future(b.submit(a, _x(0), 5))
        while not runner.started.is_set():
            await asyncio.sleep(0.001)
        queued = asyncio.ensure_future(b.submit(a, _x(1), 5))
        await asyncio.sleep(0.01)
        with pytest.raises(APIError) as full:
            await b.submit(a, _x(2), 5)
        assert (full.value.status, full.value.code) == (503, "server.overloaded")
        await b.close()
        with pytest.raises(APIError) as closing:
            await queued
        assert (closing.value.status, closing.value.code) == (503, "server.shutting_down")
        gate.set()
        assert (await first).tolist() == [[0, 0, 0]]  # the running batch completes

    _run(body, max_queue=1)
    assert log == [("a", 1)]


def test_a_failure_outside_the_runner_fails_the_batch_instead_of_hanging_it():
    log: list[tuple[str, int]] = []
    a = _loaded("a", _Runner("a", log))

    async def body(b: Batcher) -> None:
        real = b._metrics.batch_size

        class Broken:
            def labels(self, *_: str) -> None:
                raise ValueError("metrics broke")

        b._metrics.batch_size = Broken()  # type: ignore[assignment]
        with pytest.raises(ValueError, match="metrics broke"):
            await b.submit(a, _x(0), 5)
        b._metrics.batch_size = real
        assert (await b.submit(a, _x(1), 5)).tolist() == [[1, 1, 1]]  # still serving

    _run(body)
