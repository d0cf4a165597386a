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
from tests.servers import MotoServer, RedisServer
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
        private_redis.stop()
        start = time.monotonic()
        calls: dict[str, list[Callable[[], object]]] = {
            "alpha": [
                lambda: store.put("alpha", bundle(2)),
                lambda: store.get("alpha"),
                lambda: store.versions("alpha"),
                lambda: store.info("alpha"),
                lambda: store.delete("alpha"),
            ],
            first.content_id: [lambda: store.get_by_id(first.content_id)],
        }
        for key, fns in calls.items():
            for fn in fns:
                with pytest.raises(Unavailable) as exc:
                    fn()
                assert_unavailable(store, exc.value, key, "Redis not reachable")
                assert "after 2 attempt(s)" in str(exc.value)
        with pytest.raises(Unavailable):
            store.list()
        with pytest.raises(Unavailable):
            store.epoch()
        assert time.monotonic() - start < 20  # bounded retries, no hanging

        private_redis.start()
        # The same client, not recreated: the data from before is intact and the
        # failed put and delete left no trace.
        got = store.get("alpha")
        assert (got.version, got.data) == (1, bundle(1))
        assert [v.version for v in store.versions("alpha")] == [1]
        assert store.epoch() == 1
        assert store.put("alpha", bundle(2)).version == 2
        assert store.epoch() == 2


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
    version verifies, blobs and refs match the heads."""
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
            used: dict[str, set[str]] = {}
            for info in store.list():
                for v in store.versions(info.name):
                    used.setdefault(v.content_id, set()).add(info.name)
            assert raw.blobs() == set(used)
            for cid, names in used.items():
                assert raw.refs(cid) == names
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
            assert await asyncio.wait_for(anext(it), 5) == 0
            await w.put("alpha", bundle(1))
            assert await asyncio.wait_for(anext(it), 5) == 1
            private_redis.stop()
            nxt = asyncio.ensure_future(anext(it))
            await asyncio.sleep(0.5)
            assert not nxt.done()  # the outage is waited out, not raised
            private_redis.start()
            await w.put("alpha", bundle(2))
            assert await asyncio.wait_for(nxt, 10) == 2

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
            for key, fn in (
                ("alpha", lambda: store.get("alpha")),
                ("alpha", lambda: store.put("alpha", bundle(2))),
                (r.content_id, lambda: store.get_by_id(r.content_id)),
            ):
                with pytest.raises(Unavailable) as exc:
                    fn()
                assert_unavailable(store, exc.value, key, "S3 not reachable")
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
    complete verified bundle, and no head ever points to a missing blob."""
    root = tmp_path / "store"
    url = root.as_uri()
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    raw = FileRaw(root)
    with open_store(url, validator=FAKE_VALIDATOR) as store:
        seen_epochs = []
        for round_ in range(4):
            before = store.epoch()
            proc = subprocess.Popen(
                [sys.executable, "-c", _KILLED_WRITER, url, str(round_ * 1000)], env=env
            )
            try:
                deadline = time.monotonic() + 60
                while store.epoch() < before + 2 and time.monotonic() < deadline:
                    time.sleep(0.05)
                time.sleep(0.01 + 0.05 * round_)  # land somewhere inside a put
            finally:
                proc.send_signal(signal.SIGKILL)
                proc.wait()
            seen_epochs.append(store.epoch())
            got = store.get("big")  # complete and verified, or Corrupt
            assert got.size >= 8_000_000
            for v in store.versions("big"):
                assert raw.read_blob(v.content_id) is not None
        assert seen_epochs == sorted(seen_epochs) and seen_epochs[-1] >= 8
        # Whatever the kills left behind, the store still takes writes.
        assert store.put("big", fake_bundle(10**6, size=1000)).created
