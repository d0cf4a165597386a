"""The batcher in-process, with lanes that record what they were given: batches are
formed when the device is free (late binding), a lone request never waits, tasks
of one lane share batches, lanes are served oldest first, and deadlines, failures
and shutdown reach the right requests."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np
import pytest

from service.batching import Batcher
from service.errors import DeadlineExceeded, Overloaded, ShuttingDown
from service.metrics import Metrics


class _Lane:
    """Logits = the first pixel of each item plus the task's number, over 3 classes;
    every batch is logged as (lane, tasks in order, rows); ``gate`` (when set) holds
    a batch until it is opened. A task named ``"bad"`` fails its requests only."""

    runtime = "torch"

    def __init__(self, name: str, log: list[tuple[str, tuple[Any, ...], int]], gate=None):  # type: ignore[no-untyped-def]
        self.key = (name, "torch")
        self.label = name
        self.log, self.gate = log, gate
        self.started = threading.Event()

    def run(self, xs: list[np.ndarray], tasks: list[Any]) -> list[np.ndarray | Exception]:
        self.log.append((self.label, tuple(tasks), sum(len(x) for x in xs)))
        self.started.set()
        if self.gate is not None:
            assert self.gate.wait(10)
        out: list[np.ndarray | Exception] = []
        for x, t in zip(xs, tasks, strict=True):
            if t == "bad":
                out.append(ValueError("task bad cannot be built"))
            else:
                out.append(np.repeat(x.reshape(len(x), -1)[:, :1], 3, axis=1) + (t or 0))
        return out


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


async def _until_started(lane: _Lane) -> None:
    while not lane.started.is_set():
        await asyncio.sleep(0.001)


def test_a_lone_request_runs_at_once_whatever_max_wait():
    log: list[tuple[str, tuple[Any, ...], int]] = []
    a = _Lane("a", log)

    async def body(b: Batcher) -> None:
        for i in range(3):
            start = time.perf_counter()
            out = await b.submit(a, 0, _x(i), 5)
            assert time.perf_counter() - start < 0.25  # max_wait is 0.5 s
            np.testing.assert_array_equal(out, [[i, i, i]])

    _run(body, max_wait_s=0.5)
    assert log == [("a", (0,), 1)] * 3


def test_requests_arriving_during_a_batch_join_the_next_one():
    log: list[tuple[str, tuple[Any, ...], int]] = []
    gate = threading.Event()
    a = _Lane("a", log, gate)

    async def body(b: Batcher) -> None:
        first = asyncio.ensure_future(b.submit(a, 0, _x(0), 5))
        await _until_started(a)
        rest = [asyncio.ensure_future(b.submit(a, 0, _x(i, n=2), 5)) for i in range(1, 6)]
        await asyncio.sleep(0.05)
        assert b.depth == 5
        gate.set()
        assert (await first).tolist() == [[0, 0, 0]]
        for i, fut in enumerate(rest, start=1):
            assert (await fut).tolist() == [[i] * 3] * 2  # each request gets its own rows

    _run(body)
    assert [(lane, rows) for lane, _, rows in log] == [("a", 1), ("a", 10)]


def test_max_batch_splits_and_a_request_stays_whole():
    log: list[tuple[str, tuple[Any, ...], int]] = []
    gate = threading.Event()
    a = _Lane("a", log, gate)

    async def body(b: Batcher) -> None:
        first = asyncio.ensure_future(b.submit(a, 0, _x(0), 5))
        await _until_started(a)
        sizes = [3, 3, 3, 1]
        rest = [asyncio.ensure_future(b.submit(a, 0, _x(i, n), 5)) for i, n in enumerate(sizes)]
        await asyncio.sleep(0.05)
        gate.set()
        await asyncio.gather(first, *rest)

    _run(body, max_batch=8, max_wait_s=0)
    assert [rows for _, _, rows in log] == [1, 6, 4]


def test_tasks_of_one_lane_share_a_batch_and_lanes_are_served_oldest_first():
    log: list[tuple[str, tuple[Any, ...], int]] = []
    gate = threading.Event()
    x, a, c = _Lane("x", log, gate), _Lane("a", log), _Lane("c", log)

    async def body(b: Batcher) -> None:
        first = asyncio.ensure_future(b.submit(x, 0, _x(9), 5))
        await _until_started(x)
        order = [(c, 10), (a, 20), (c, 30), (a, 40), (a, 50), (c, 10)]
        futs = []
        for i, (lane, task) in enumerate(order):
            futs.append(asyncio.ensure_future(b.submit(lane, task, _x(i), 5)))
            await asyncio.sleep(0.002)
        gate.set()
        results = await asyncio.gather(first, *futs)
        for i, ((_, task), out) in enumerate(zip(order, results[1:], strict=True)):
            assert out.tolist() == [[i + task] * 3]  # each request answered by its own task

    _run(body)
    assert log == [("x", (0,), 1), ("c", (10, 30, 10), 3), ("a", (20, 40, 50), 3)]


def test_a_request_past_its_deadline_is_a_timeout_and_skipped():
    log: list[tuple[str, tuple[Any, ...], int]] = []
    gate = threading.Event()
    a = _Lane("a", log, gate)

    async def body(b: Batcher) -> None:
        first = asyncio.ensure_future(b.submit(a, 0, _x(0), 5))
        await _until_started(a)
        with pytest.raises(DeadlineExceeded):
            await b.submit(a, 1, _x(1), 0.05)
        late = asyncio.ensure_future(b.submit(a, 2, _x(2), 5))
        await asyncio.sleep(0.01)
        gate.set()
        await first
        assert (await late).tolist() == [[4, 4, 4]]

    _run(body)
    assert log == [("a", (0,), 1), ("a", (2,), 1)]  # the timed-out request never ran


def test_a_task_that_fails_fails_its_requests_only_even_in_a_shared_batch():
    log: list[tuple[str, tuple[Any, ...], int]] = []
    gate = threading.Event()
    a = _Lane("a", log, gate)

    async def body(b: Batcher) -> None:
        first = asyncio.ensure_future(b.submit(a, 0, _x(0), 5))
        await _until_started(a)
        good = asyncio.ensure_future(b.submit(a, 1, _x(1), 5))
        bad = asyncio.ensure_future(b.submit(a, "bad", _x(2), 5))
        other = asyncio.ensure_future(b.submit(a, 3, _x(3), 5))
        await asyncio.sleep(0.01)
        gate.set()
        await first
        assert (await good).tolist() == [[2, 2, 2]]
        with pytest.raises(ValueError, match="cannot be built"):
            await bad
        assert (await other).tolist() == [[6, 6, 6]]

    _run(body)
    assert log[1] == ("a", (1, "bad", 3), 3)


def test_a_failing_lane_fails_its_batch_only():
    log: list[tuple[str, tuple[Any, ...], int]] = []

    class Broken(_Lane):
        def run(self, xs: list[np.ndarray], tasks: list[Any]) -> list[np.ndarray | Exception]:
            raise RuntimeError("device on fire")

    bad, good = Broken("bad", log), _Lane("good", log)

    async def body(b: Batcher) -> None:
        with pytest.raises(RuntimeError, match="on fire"):
            await b.submit(bad, 0, _x(0), 5)
        assert (await b.submit(good, 0, _x(1), 5)).tolist() == [[1, 1, 1]]

    _run(body)


def test_a_full_queue_is_overloaded_and_close_answers_queued_requests():
    log: list[tuple[str, tuple[Any, ...], int]] = []
    gate = threading.Event()
    a = _Lane("a", log, gate)

    async def body(b: Batcher) -> None:
        first = asyncio.ensure_future(b.submit(a, 0, _x(0), 5))
        await _until_started(a)
        queued = asyncio.ensure_future(b.submit(a, 0, _x(1), 5))
        await asyncio.sleep(0.01)
        with pytest.raises(Overloaded, match="queue is full"):
            await b.submit(a, 0, _x(2), 5)
        await b.close()
        with pytest.raises(ShuttingDown):
            await queued
        gate.set()
        assert (await first).tolist() == [[0, 0, 0]]  # the running batch completes

    _run(body, max_queue=1)
    assert [rows for _, _, rows in log] == [1]


def test_a_failure_outside_the_lane_fails_the_batch_instead_of_hanging_it():
    log: list[tuple[str, tuple[Any, ...], int]] = []
    a = _Lane("a", log)

    async def body(b: Batcher) -> None:
        real = b._metrics.batch_size

        class Broken:
            def labels(self, *_: str) -> None:
                raise ValueError("metrics broke")

        b._metrics.batch_size = Broken()  # type: ignore[assignment]
        with pytest.raises(ValueError, match="metrics broke"):
            await b.submit(a, 0, _x(0), 5)
        b._metrics.batch_size = real
        assert (await b.submit(a, 0, _x(1), 5)).tolist() == [[1, 1, 1]]  # still serving

    _run(body)


def test_a_burst_of_50_tasks_runs_as_one_batch_and_each_answer_is_its_task_alone():
    """Real lane, real backbone: 50 requests for 50 different tasks queued while the
    device is busy run as one mixed batch; each answer equals its task served alone."""
    import torch

    from pemn.bundle import read_bundle
    from pemn.materialize import Backbone
    from pemn.testing import make_bundle
    from service.runtimes import TorchLane

    config = {"in_channels": 1, "image_size": 28, "width": 16, "depth": 2, "patch": 4}
    bundles = [read_bundle(make_bundle("convmixer", config, mask_seed=900 + i)) for i in range(50)]
    backbone = Backbone.for_bundle(bundles[0], channels_last=True)
    tasks = [backbone.pack(b) for b in bundles]
    xs = [np.random.default_rng(i).random((1, 1, 28, 28), dtype=np.float32) for i in range(50)]
    alone = [
        backbone.forward(torch.from_numpy(x), backbone.materialize(t)).numpy()
        for x, t in zip(xs, tasks, strict=True)
    ]
    log: list[tuple[str, tuple[Any, ...], int]] = []
    gate = threading.Event()
    blocker = _Lane("blocker", log, gate)
    lane = TorchLane(("fp", "torch"), backbone, 10 * backbone.task_nbytes, "per_sample")

    async def body(b: Batcher) -> None:
        first = asyncio.ensure_future(b.submit(blocker, 0, _x(0), 5))
        await _until_started(blocker)
        futs = [
            asyncio.ensure_future(b.submit(lane, t, x, 30)) for t, x in zip(tasks, xs, strict=True)
        ]
        await asyncio.sleep(0.05)
        assert b.depth == 50
        gate.set()
        await first
        for got, want in zip(await asyncio.gather(*futs), alone, strict=True):
            np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)

    _run(body)
    s = lane.stats()
    assert s["batches"] == {"single": 0, "per_sample": 1, "per_task": 0, "onnx": 0}  # one batch
    assert s["items"] == 10 and s["evictions"] == 40  # the hot tier held 10 at a time
