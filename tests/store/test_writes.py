"""Writes without locks: a writer killed between its two writes blocks nobody, a
writer stuck on one name does not hold up another name, and a write abandoned at its
deadline never commits later (Redis refuses the late swap itself)."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from pemn.store import DeadlineExceeded, open_async_store, open_store
from pemn.testing.servers import RedisServer
from tests.store.bundles import bundle
from tests.store.conftest import Target, store_options

ROOT = Path(__file__).resolve().parents[2]

# Creates its version object, then dies (SIGKILL) just before swapping the head.
_DIES_BETWEEN_WRITES = """
import json, os, signal, sys
from pemn.store import open_async_store
from tests.store.bundles import bundle
import asyncio

async def main():
    store = open_async_store(sys.argv[1], **json.loads(sys.argv[2]))
    async def die(*a, **k):
        os.kill(os.getpid(), signal.SIGKILL)
    store._backend.swap_head = die
    await store.put("alpha", bundle(2))

asyncio.run(main())
"""


def test_a_writer_killed_between_its_two_writes_blocks_nobody(target: Target) -> None:
    import json

    with open_store(target.url, **store_options(target)) as store:
        store.put("alpha", bundle(1))
        env = {**os.environ, "PYTHONPATH": str(ROOT)}
        opts = json.dumps(store_options(target))
        proc = subprocess.run(
            [sys.executable, "-c", _DIES_BETWEEN_WRITES, target.url, opts], env=env, timeout=120
        )
        assert proc.returncode == -9
        assert ("alpha", 2) in target.raw.version_keys()  # its first write happened
        assert store.get("alpha").version == 1  # its second did not
        start = time.monotonic()
        r = store.put("alpha", bundle(3))  # another writer succeeds at once
        assert time.monotonic() - start < 2
        assert (r.version, r.created) == (3, True)  # the dead writer's number is skipped
        assert store.get("alpha").data == bundle(3)


def test_a_writer_stuck_on_one_name_does_not_hold_up_another(target: Target) -> None:
    async def main() -> None:
        async with open_async_store(target.url, **store_options(target)) as s:
            await s.put("alpha", bundle(1))
            stuck, release = asyncio.Event(), asyncio.Event()
            real = s._backend.create_version

            async def slow(name: str, version: int, data: bytes) -> bool:
                if name == "alpha":
                    stuck.set()
                    await release.wait()
                return await real(name, version, data)

            s._backend.create_version = slow  # type: ignore[method-assign]
            held = asyncio.create_task(s.put("alpha", bundle(2)))
            await stuck.wait()
            other = await asyncio.wait_for(s.put("beta", bundle(3)), 10)
            assert other.version == 1 and not held.done()
            await s.delete("beta")  # a delete of another name does not wait either
            release.set()
            assert (await held).version == 2

    asyncio.run(main())


@pytest.mark.redis
def test_redis_refuses_a_swap_that_arrives_after_its_deadline() -> None:
    redis = RedisServer()
    try:

        async def main() -> None:
            opts: dict[str, Any] = {"timeout": 5}
            async with open_async_store(f"{redis.url}?prefix=late", **opts) as s:
                await s.put("alpha", bundle(1))
                real = s._backend.create_version

                async def then_freeze(name: str, version: int, data: bytes) -> bool:
                    done = await real(name, version, data)
                    redis.pause()  # the swap goes out to a server that is not answering
                    return done

                s._backend.create_version = then_freeze  # type: ignore[method-assign]
                start = time.monotonic()
                with pytest.raises(DeadlineExceeded):
                    await s.put("alpha", bundle(2), timeout=1.0)
                assert time.monotonic() - start < 3  # answered at the deadline
                redis.resume()  # Redis now runs the queued swap: past its deadline
            await asyncio.sleep(0.5)
            async with open_async_store(f"{redis.url}?prefix=late") as s:
                assert (await s.info("alpha")).version == 1

        asyncio.run(main())
    finally:
        redis.close()
