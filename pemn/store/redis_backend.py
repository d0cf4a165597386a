"""The Redis backend (``redis://host:port/db?prefix=P``), on redis-py's asyncio client.

Key layout (docs/stores.md), ``P`` the prefix (default ``pemn``)::

    P:heads            hash: name -> head record (listing is one HGETALL snapshot)
    P:v:<name>:<n>     string: version object, created with SET NX
    P:changes          integer: the change marker (starts at a random value)
    P:events           pub/sub channel: the name, after each swap

A head swap is one short Lua script (``_SWAP``): if the stored head still equals the
bytes this writer read, and the Redis clock is before the writer's deadline, it sets
the new head, increments ``P:changes`` and publishes, atomically. The deadline is
carried into the Redis clock from the ``TIME`` read beside the head, so a swap that
reaches Redis after its writer gave up (a frozen or slow server) is refused there.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
from collections.abc import Awaitable
from typing import Any, TypeVar

import redis.asyncio as aioredis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import RedisError, ResponseError

from pemn.store.backend import Backend, Hint
from pemn.store.errors import DeadlineExceeded, StoreError, Unavailable
from pemn.store.options import RedisConfig, StoreOptions

__all__ = ["RedisBackend"]

log = logging.getLogger("pemn.store")
T = TypeVar("T")
_SCRIPT_ERRORS = ("NOSCRIPT", "ERR Error running script", "ERR user_script", "WRONGTYPE")

# KEYS: heads, changes; ARGV: name, expected ("" = absent), new, deadline_us, channel, seed
_SWAP = """
if tonumber(ARGV[4]) > 0 then
  local t = redis.call('TIME')
  if tonumber(t[1]) * 1000000 + tonumber(t[2]) >= tonumber(ARGV[4]) then return -1 end
end
if (redis.call('HGET', KEYS[1], ARGV[1]) or '') ~= ARGV[2] then return 0 end
redis.call('HSET', KEYS[1], ARGV[1], ARGV[3])
if redis.call('EXISTS', KEYS[2]) == 0 then redis.call('SET', KEYS[2], ARGV[6]) end
redis.call('INCR', KEYS[2])
redis.call('PUBLISH', ARGV[5], ARGV[1])
return 1
"""


class RedisBackend(Backend):
    server_deadline = True

    def __init__(self, display: str, config: RedisConfig, options: StoreOptions) -> None:
        self.display = display
        p = self.prefix = config.prefix
        self.k_heads, self.k_changes, self.channel = f"{p}:heads", f"{p}:changes", f"{p}:events"
        # Retries are the store's job (bounded, only where safe): one attempt per command.
        self._client: aioredis.Redis = aioredis.Redis.from_url(
            config.url,
            socket_timeout=options.timeout,
            socket_connect_timeout=options.timeout,
            retry=Retry(NoBackoff(), 0),
            health_check_interval=30,
        )
        self._swap = self._client.register_script(_SWAP)

    def k_version(self, name: str, version: int) -> str:
        return f"{self.prefix}:v:{name}:{version}"

    async def _call(self, key: str, what: Awaitable[T]) -> T:
        """Await a Redis call; anything but a script error becomes ``Unavailable``."""
        try:
            return await what
        except ResponseError as exc:
            if str(exc).startswith(_SCRIPT_ERRORS):
                raise StoreError(f"Redis refused: {exc}", store=self.display, key=key) from exc
            raise Unavailable(f"Redis refused: {exc}", store=self.display, key=key) from exc
        except (RedisError, OSError, TimeoutError, EOFError) as exc:
            # Pooled connections to a server that went away are all dead: drop the
            # idle ones now, so that the next calls connect afresh.
            with contextlib.suppress(Exception):  # bounded: a dead link may not close
                await asyncio.wait_for(
                    self._client.connection_pool.disconnect(inuse_connections=False),
                    _CLOSE_TIMEOUT,
                )
            why = str(exc) or type(exc).__name__
            raise Unavailable(f"Redis not reachable: {why}", store=self.display, key=key) from exc

    async def read_head(self, name: str) -> tuple[bytes | None, Any]:
        async with self._client.pipeline(transaction=False) as pipe:
            pipe.time()
            pipe.hget(self.k_heads, name)
            (sec, usec), raw = await self._call(name, pipe.execute())
        # The token: the bytes read, and the Redis clock against ours at that moment.
        return raw, (raw or b"", sec * 1_000_000 + usec, time.monotonic())

    async def read_heads(self) -> dict[str, bytes]:
        raw: dict[bytes, bytes] = await self._call(self.k_heads, self._client.hgetall(self.k_heads))  # type: ignore[arg-type]
        return {k.decode(): v for k, v in raw.items()}

    async def swap_head(self, name: str, token: Any, record: bytes, deadline: float) -> bool:
        expected, redis_us, ours = token
        # Redis read its clock no later than we got the reply (``ours``): a deadline
        # in its clock this far after that reading is never later than ours.
        until = redis_us + int((deadline - ours) * 1_000_000)
        args = [name, expected, record, until, self.channel, random.randrange(1 << 48)]
        done = await self._call(name, self._swap(keys=[self.k_heads, self.k_changes], args=args))
        if done == -1:
            raise DeadlineExceeded(
                "Redis received the commit after its deadline and refused it",
                store=self.display,
                key=name,
            )
        return bool(done == 1)

    async def create_version(self, name: str, version: int, data: bytes) -> bool:
        key = self.k_version(name, version)
        return bool(await self._call(key, self._client.set(key, data, nx=True)))

    async def read_version(self, name: str, version: int) -> bytes | None:
        key = self.k_version(name, version)
        raw: bytes | None = await self._call(key, self._client.get(key))  # type: ignore[arg-type]
        return raw

    async def delete_versions(self, name: str, versions: list[int]) -> None:
        keys = [self.k_version(name, v) for v in versions]
        await self._call(name, self._client.delete(*keys))

    async def marker(self) -> str:
        raw = await self._call(self.k_changes, self._client.get(self.k_changes))
        return raw.decode() if isinstance(raw, bytes) else "0"

    async def open_hint(self) -> Hint:
        return _RedisHint(self._client, self.channel, self.display)

    async def aclose(self) -> None:
        # bounded like the pub/sub close below: a connection whose link died mid-read
        # can keep the pool's lock; closing the store must not hang on it
        with contextlib.suppress(RedisError, OSError, TimeoutError):
            await asyncio.wait_for(self._client.aclose(), 2 * _CLOSE_TIMEOUT)


_CLOSE_TIMEOUT = 1.0  # seconds a pub/sub connection may take to close


class _RedisHint(Hint):
    """Subscribes to the events channel in a task; re-subscribes after an outage.
    The event is set on every message and after every (re)subscription."""

    def __init__(self, client: aioredis.Redis, channel: str, display: str) -> None:
        super().__init__()
        self._client, self._channel, self._display = client, channel, display
        self._task = asyncio.create_task(self._run(), name=f"pemn.store hint {channel}")

    async def _run(self) -> None:
        backoff = 0.05
        while True:
            pubsub = self._client.pubsub()
            try:
                await pubsub.subscribe(self._channel)
                self.event.set()
                backoff = 0.05
                while True:
                    msg = await pubsub.get_message(ignore_subscribe_messages=True, timeout=5.0)
                    if msg is None:
                        await pubsub.ping()  # an idle link: make a dead one fail now
                    elif msg.get("type") == "message":
                        self.event.set()
            except (RedisError, OSError, TimeoutError) as exc:
                log.debug("store %s: pub/sub lost (%s); resubscribing", self._display, exc)
            finally:
                # bounded: closing a pub/sub whose link died mid-read can wait on it
                # (asyncio.timeout, not wait_for: see pemn.store.core.wait_event)
                with contextlib.suppress(RedisError, OSError, TimeoutError):
                    async with asyncio.timeout(_CLOSE_TIMEOUT):
                        await pubsub.aclose()
            await asyncio.sleep(backoff)
            backoff = min(backoff * 2, 2.0)

    async def aclose(self) -> None:
        self._task.cancel()
        # never hang the watcher's exit on the subscriber task (see above)
        await asyncio.wait({self._task}, timeout=2 * _CLOSE_TIMEOUT)
