"""The async API and change following (``watch``): marker polling on every backend,
Redis pub/sub as the fast hint, catch-up after missed messages."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncGenerator
from typing import Any

import pytest

from pemn.store import AsyncStore, NotFound, PreconditionFailed, open_async_store, open_store
from tests.store.bundles import bundle
from tests.store.conftest import Target, store_options


def astore_for(target: Target, **options: Any) -> AsyncStore:
    return open_async_store(target.url, **store_options(target, **options))


def test_async_api_round_trip(target: Target) -> None:
    async def main() -> None:
        async with astore_for(target, retain=2) as s:
            r1 = await s.put("alpha", bundle(1))
            r2 = await s.put("alpha", bundle(2))
            await s.put("alpha", bundle(3))
            assert (r1.version, r2.version) == (1, 2)
            assert (await s.get("alpha")).data == bundle(3)
            assert (await s.get("alpha", version=2)).data == bundle(2)
            with pytest.raises(NotFound):
                await s.get("alpha", version=1)
            assert [v.version for v in await s.versions("alpha")] == [2, 3]
            assert [i.name for i in await s.list()] == ["alpha"]
            assert (await s.info("alpha")).version == 3
            with pytest.raises(PreconditionFailed):
                await s.put("alpha", bundle(4), if_match=r2.content_id)
            assert (await s.rollback("alpha", 2)).content_id == r2.content_id
            # Concurrent calls on one async store.
            results = await asyncio.gather(*(s.put(f"n{i}", bundle(10 + i)) for i in range(6)))
            assert {r.name for r in results} == {f"n{i}" for i in range(6)}
            assert len({r.content_id for r in results}) == 6
            await s.delete("alpha")
            assert [i.name for i in await s.list()] == [f"n{i}" for i in range(6)]

    asyncio.run(main())


class Watching:
    """Consume ``store.watch(...)`` in a task; ``seen`` lists what it yielded."""

    def __init__(self, store: AsyncStore, **kw: Any) -> None:
        self.it: AsyncGenerator[str, None] = store.watch(**kw)
        self.seen: list[str] = []
        self.changed = asyncio.Event()

    async def _run(self) -> None:
        async for marker in self.it:
            self.seen.append(marker)
            self.changed.set()

    async def __aenter__(self) -> Watching:
        self.task = asyncio.create_task(self._run())
        return self

    async def __aexit__(self, *exc: object) -> None:
        self.task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self.task
        await self.it.aclose()

    async def until(self, value: str, timeout: float = 5.0) -> float:
        return await _until(self.seen, value, self.changed, timeout)


async def _until(seen: list[str], value: str, changed: asyncio.Event, timeout: float) -> float:
    """Wait until ``value`` was yielded; return how long it took."""
    start = time.monotonic()
    deadline = start + timeout
    while value not in seen:
        changed.clear()
        left = deadline - time.monotonic()
        if left <= 0:
            raise AssertionError(f"marker {value} not seen within {timeout}s (seen {seen})")
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(changed.wait(), left)
    return time.monotonic() - start


def test_watch_yields_current_marker_then_each_change(target: Target) -> None:
    async def main() -> None:
        async with astore_for(target) as s, astore_for(target) as writer:
            await writer.put("alpha", bundle(1))
            async with Watching(s, poll_interval=0.05) as w:
                await w.until(await writer.marker())
                for i in (2, 3):
                    await writer.put("alpha", bundle(i))
                    await w.until(await writer.marker())
                await writer.delete("alpha")
                await w.until(await writer.marker())
            assert len(w.seen) == len(set(w.seen)) == 4  # each change once, nothing else

    asyncio.run(main())


def test_watch_since_waits_for_a_change_and_catches_up(target: Target) -> None:
    async def main() -> None:
        async with astore_for(target) as s:
            await s.put("alpha", bundle(1))
            m1 = await s.marker()
            async with contextlib.aclosing(s.watch(poll_interval=0.05, since=m1)) as it:
                first = asyncio.ensure_future(anext(it))
                await asyncio.sleep(0.3)
                assert not first.done()  # nothing new since m1
                await s.put("alpha", bundle(2))
                m2 = await s.marker()
                assert await asyncio.wait_for(first, 5) == m2 != m1
                # Missed changes (the consumer was busy) fold into the latest marker.
                for i in range(3, 7):
                    await s.put("alpha", bundle(i))
                assert await asyncio.wait_for(anext(it), 5) == await s.marker()
            # A subscriber that was away catches up from an old marker at once.
            async with contextlib.aclosing(s.watch(poll_interval=60, since=m2)) as late:
                assert await asyncio.wait_for(anext(late), 5) == await s.marker()

    asyncio.run(main())


def test_watch_rejects_bad_poll_interval(tmp_path: Any) -> None:
    async def main() -> None:
        async with open_async_store(tmp_path.as_uri()) as s:
            with pytest.raises(ValueError):
                await anext(s.watch(poll_interval=0))

    asyncio.run(main())


REDIS = [pytest.param("redis", marks=pytest.mark.redis, id="redis")]


def test_a_watchers_wait_ends_when_cancelled_as_its_hint_fires() -> None:
    """The watcher waits for its hint with a timeout. A cancellation that arrives in
    the same loop step as the hint must still end the wait (asyncio.wait_for on Python
    3.11 returns instead, and the watcher then never stops: a test hung on it)."""
    from pemn.store.core import wait_event

    async def main() -> tuple[bool, float]:
        event = asyncio.Event()
        task = asyncio.create_task(wait_event(event, 30))
        await asyncio.sleep(0)  # the task is now waiting
        start = time.monotonic()
        event.set()
        task.cancel()
        try:
            await task
        except asyncio.CancelledError:
            return True, time.monotonic() - start
        return False, time.monotonic() - start

    cancelled, took = asyncio.run(main())
    assert cancelled and took < 5

    async def times_out() -> float:
        start = time.monotonic()
        await wait_event(asyncio.Event(), 0.05)  # no hint: returns at the timeout
        return time.monotonic() - start

    assert 0.04 < asyncio.run(times_out()) < 5


def test_a_write_request_cancelled_as_it_completes_stops_the_write(tmp_path: Any) -> None:
    """A write's backend request that completes in the loop step its cancellation
    (the client went away) arrives in must still raise, so nothing after it (the
    head swap) runs; and a request whose deadline has passed is never started."""
    from pemn.store import DeadlineExceeded
    from pemn.store.core import _Write

    async def main() -> tuple[bool, bool]:
        async with open_async_store(tmp_path.as_uri()) as s:
            done: asyncio.Future[int] = asyncio.get_running_loop().create_future()
            call = s._call(_Write(time.monotonic() + 30), done, "alpha")
            task = asyncio.create_task(call)
            await asyncio.sleep(0)  # the request is in flight
            done.set_result(1)
            task.cancel()
            try:
                await task
                cancelled = False
            except asyncio.CancelledError:
                cancelled = True
            started = []

            async def request() -> int:
                started.append(1)
                return 1

            with pytest.raises(DeadlineExceeded, match="deadline"):
                await s._call(_Write(time.monotonic() - 1), request(), "alpha")
            return cancelled, bool(started)

    assert asyncio.run(main()) == (True, False)


@pytest.mark.parametrize("target", REDIS, indirect=True)
def test_pubsub_hint_is_fast(target: Target) -> None:
    """With polling every 60 s, only the pub/sub hint can deliver a change quickly."""

    async def main() -> None:
        async with (
            astore_for(target) as s,
            astore_for(target) as writer,
            Watching(s, poll_interval=60) as w,
        ):
            await w.until(await writer.marker())
            await asyncio.sleep(0.2)  # let the subscription settle
            for i in (1, 2, 3):
                await writer.put("alpha", bundle(i))
                assert await w.until(await writer.marker()) < 2.0

    asyncio.run(main())


@pytest.mark.parametrize("target", REDIS, indirect=True)
def test_watch_catches_up_after_pubsub_messages_are_lost(target: Target) -> None:
    """Kill the subscriber's connection, change the store while it is down: the
    published messages are lost, yet the watcher reaches the latest marker."""
    import redis

    async def main() -> None:
        prefix = target.url.split("prefix=")[1]
        async with astore_for(target) as s, astore_for(target) as writer:
            admin = redis.Redis.from_url(target.url.split("?")[0])
            n = 0
            try:
                async with Watching(s, poll_interval=0.3) as w:
                    await w.until(await writer.marker())
                    for _ in range(3):
                        for _ in range(100):  # until the watcher is subscribed
                            if admin.pubsub_numsub(f"{prefix}:events")[0][1]:
                                break
                            await asyncio.sleep(0.02)
                        assert admin.client_kill_filter(_type="pubsub") >= 1
                        for _ in range(3):
                            n += 1
                            await writer.put("alpha", bundle(n))
                    await w.until(await writer.marker())
            finally:
                admin.close()

    asyncio.run(main())


@pytest.mark.parametrize("target", REDIS, indirect=True)
def test_redis_watch_polls_without_the_hint(target: Target) -> None:
    """Polling alone (the hint switched off) still delivers every change."""

    async def main() -> None:
        async with astore_for(target) as s:

            async def no_hint() -> None:
                return None

            s._backend.open_hint = no_hint  # type: ignore[method-assign]
            async with contextlib.aclosing(s.watch(poll_interval=0.05)) as it:
                assert await asyncio.wait_for(anext(it), 5) == await s.marker()
                await s.put("alpha", bundle(1))
                assert await asyncio.wait_for(anext(it), 5) == await s.marker()

    asyncio.run(main())


def test_sync_store_works_inside_a_running_event_loop(target: Target) -> None:
    async def main() -> None:
        with open_store(target.url, **store_options(target)) as s:
            s.put("alpha", bundle(1))  # runs on the store's own loop thread
            assert s.get("alpha").data == bundle(1)

    asyncio.run(main())


def test_closed_async_store_refuses_calls(tmp_path: Any) -> None:
    async def main() -> None:
        s = open_async_store(tmp_path.as_uri())
        await s.close()
        await s.close()  # idempotent
        with pytest.raises(RuntimeError, match="closed"):
            await s.list()

    asyncio.run(main())
