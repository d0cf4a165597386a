"""Faults: a backend that goes away (stopped, frozen) mid-test, and a writer killed
mid-put. The store raises ``Unavailable`` with a clear message, corrupts nothing,
and the same client object works again once the backend is back."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from pemn.store import NotFound, Store, Unavailable, open_async_store, open_store
from pemn.testing.servers import MotoServer, RedisServer
from tests.store.bundles import FAKE_VALIDATOR, VALIDATOR, bundle, fake_bundle
from tests.store.conftest import FileRaw, RedisRaw

ROOT = Path(__file__).resolve().parents[2]
FAST_FAIL = {"retries": 2, "retry_backoff": 0.05, "timeout": 1.0}


def opts(**kw: Any) -> dict[str, Any]:
    return {"validator": VALIDATOR, **FAST_FAIL, **kw} if VALIDATOR else {**FAST_FAIL, **kw}


@pytest.fixture
def private_redis() -> Iterator[RedisServer]:
    """A Redis of this test's own (persistent, so a restart keeps the data)."""
    server = RedisServer(persist=True)
    try:
        yield server
    finally:
        server.close()


def assert_unavailable(store: Store, exc: Unavailable, key: str, why: str) -> None:
    text = str(exc)
    assert exc.code == "store.unavailable"
    assert store.url in text and repr(key) in text and why in text, text


@pytest.mark.redis
def test_redis_stopped_and_restarted(private_redis: RedisServer) -> None:
    with open_store(private_redis.url + "?prefix=f", **opts()) as store:
        first = store.put("alpha", bundle(1))
        marker = store.marker()
        private_redis.stop()
        start = time.monotonic()
        calls: list[Callable[[], object]] = [
            lambda: store.put("alpha", bundle(2)),
            lambda: store.get("alpha"),
            lambda: store.versions("alpha"),
            lambda: store.info("alpha"),
            lambda: store.delete("alpha"),
            lambda: store.rollback("alpha", 1),
        ]
        for fn in calls:
            with pytest.raises(Unavailable) as exc:
                fn()
            assert_unavailable(store, exc.value, "alpha", "Redis not reachable")
            assert "after 2 attempt(s)" in str(exc.value)
        with pytest.raises(Unavailable):
            store.list()
        with pytest.raises(Unavailable):
            store.marker()
        assert time.monotonic() - start < 20  # bounded retries, no hanging

        private_redis.start()
        # The same client, not recreated: the data from before is intact and the
        # failed put and delete left no trace.
        got = store.get("alpha")
        assert (got.version, got.data, got.content_id) == (1, bundle(1), first.content_id)
        assert [v.version for v in store.versions("alpha")] == [1]
        assert store.marker() == marker
        assert store.put("alpha", bundle(2)).version == 2
        assert store.marker() != marker


@pytest.mark.redis
def test_redis_frozen_times_out_then_recovers(private_redis: RedisServer) -> None:
    with open_store(private_redis.url + "?prefix=f", **opts(timeout=0.5)) as store:
        store.put("alpha", bundle(1))
        private_redis.pause()
        try:
            start = time.monotonic()
            with pytest.raises(Unavailable) as exc:
                store.get("alpha")
            assert_unavailable(store, exc.value, "alpha", "Redis not reachable")
            assert "Timeout" in str(exc.value) or "timed out" in str(exc.value)
            assert time.monotonic() - start < 10
        finally:
            private_redis.resume()
        assert store.get("alpha").data == bundle(1)


@pytest.mark.redis
@pytest.mark.timeout(120)
def test_redis_stopped_while_writers_and_readers_run(private_redis: RedisServer) -> None:
    """Stop Redis under load, restart it: every acknowledged put is there, every
    version verifies, the version objects are exactly the retained versions."""
    url = private_redis.url + "?prefix=f"
    acked: list[tuple[str, int, str]] = []
    failures: dict[str, int] = {"put": 0, "get": 0}
    bad: list[BaseException] = []
    stop = threading.Event()

    def writer(w: int) -> None:
        with open_store(url, **opts(retain=1000)) as s:
            i = 0
            while not stop.is_set():
                i += 1
                name = ("alpha", "beta")[i % 2]
                try:
                    r = s.put(name, bundle(w * 100_000 + i))
                    acked.append((name, r.version, r.content_id))
                except Unavailable:
                    failures["put"] += 1
                    time.sleep(0.05)
                except BaseException as e:
                    bad.append(e)
                    return

    def reader() -> None:
        with open_store(url, **opts()) as s:
            while not stop.is_set():
                for name in ("alpha", "beta"):
                    try:
                        s.get(name)  # verified, or it raises Corrupt (a failure here)
                    except (Unavailable, NotFound):
                        failures["get"] += 1
                        time.sleep(0.05)
                    except BaseException as e:
                        bad.append(e)
                        return

    threads = [threading.Thread(target=writer, args=(w,)) for w in range(2)]
    threads += [threading.Thread(target=reader) for _ in range(2)]
    for t in threads:
        t.start()
    try:
        time.sleep(0.5)
        for _ in range(2):
            private_redis.stop()
            time.sleep(0.7)
            private_redis.start()
            time.sleep(0.7)
    finally:
        stop.set()
        for t in threads:
            t.join(60)
    assert not bad, bad
    assert failures["put"] > 0 and failures["get"] > 0  # the outage was felt
    assert len(acked) > 10
    raw = RedisRaw(private_redis.url, "f")
    try:
        with open_store(url, **opts(retain=1000)) as store:
            for name, version, cid in acked:
                assert store.get(name, version).content_id == cid
            used = {(i.name, v.version) for i in store.list() for v in store.versions(i.name)}
            assert used <= raw.version_keys()  # a write cut off by the outage may leave one
    finally:
        raw.close()


@pytest.mark.redis
def test_watch_survives_a_redis_restart(private_redis: RedisServer) -> None:
    url = private_redis.url + "?prefix=f"

    async def main() -> None:
        async with (
            open_async_store(url, **opts()) as s,
            open_async_store(url, **opts()) as w,
            contextlib.aclosing(s.watch(poll_interval=0.1)) as it,
        ):
            assert await asyncio.wait_for(anext(it), 5) == await w.marker()
            await w.put("alpha", bundle(1))
            assert await asyncio.wait_for(anext(it), 5) == await w.marker()
            private_redis.stop()
            nxt = asyncio.ensure_future(anext(it))
            await asyncio.sleep(0.5)
            assert not nxt.done()  # the outage is waited out, not raised
            private_redis.start()
            await w.put("alpha", bundle(2))
            assert await asyncio.wait_for(nxt, 10) == await w.marker()

    asyncio.run(main())


@pytest.mark.s3
def test_s3_server_gone_and_back() -> None:
    server = MotoServer()
    port = server.port
    try:
        server.bucket("pemn-fault")
        url = f"s3://pemn-fault/p?endpoint_url={server.endpoint_url}"
        with open_store(url, **opts(**server.credentials)) as store:
            r = store.put("alpha", bundle(1))
            server.stop()
            assert r.version == 1
            for fn in (
                lambda: store.get("alpha"),
                lambda: store.put("alpha", bundle(2)),
                lambda: store.delete("alpha"),
            ):
                with pytest.raises(Unavailable) as exc:
                    fn()
                assert_unavailable(store, exc.value, "alpha", "S3: ")
            # moto keeps data in memory: the new server on the same port is empty.
            server.close()
            server = MotoServer(port=port)
            server.bucket("pemn-fault")
            with pytest.raises(NotFound):
                store.get("alpha")
            assert store.put("alpha", bundle(2)).version == 1
            assert store.get("alpha").data == bundle(2)
    finally:
        server.close()


_KILLED_WRITER = """
import sys
from pemn.store import open_store
from tests.store.bundles import FAKE_VALIDATOR, fake_bundle
with open_store(sys.argv[1], retain=2, validator=FAKE_VALIDATOR) as s:
    i = int(sys.argv[2])
    while True:
        i += 1
        s.put("big", fake_bundle(i, size=8_000_000))
"""


@pytest.mark.slow
@pytest.mark.timeout(180)
def test_directory_writer_killed_mid_put(tmp_path: Path) -> None:
    """SIGKILL a writer of 8 MB bundles at random points: readers always get a
    complete verified bundle, and no head ever points to a missing version object."""
    root = tmp_path / "store"
    url = root.as_uri()
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    raw = FileRaw(root)
    with open_store(url, validator=FAKE_VALIDATOR) as store:
        seen = []
        for round_ in range(4):
            before = store.info("big").version if round_ else 0
            proc = subprocess.Popen(
                [sys.executable, "-c", _KILLED_WRITER, url, str(round_ * 1000)], env=env
            )
            try:
                deadline = time.monotonic() + 60
                while time.monotonic() < deadline:
                    with contextlib.suppress(NotFound):
                        if store.info("big").version >= before + 2:
                            break
                    time.sleep(0.05)
                time.sleep(0.01 + 0.05 * round_)  # land somewhere inside a put
            finally:
                proc.send_signal(signal.SIGKILL)
                proc.wait()
            got = store.get("big")  # complete and verified, or Corrupt
            assert got.size >= 8_000_000
            seen.append(got.version)
            for v in store.versions("big"):
                assert raw.read_version("big", v.version) is not None
        assert seen == sorted(seen) and seen[-1] >= 8
        # Whatever the kills left behind, the store still takes writes at once.
        start = time.monotonic()
        assert store.put("big", fake_bundle(10**6, size=1000)).created
        assert time.monotonic() - start < 5
