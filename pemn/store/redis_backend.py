"""The Redis backend (``redis://host:port/db?prefix=P``), on redis-py's asyncio client.

Key layout (docs/stores.md), ``P`` the prefix (default ``pemn``)::

    P:epoch          integer (INCR), the change counter
    P:heads          hash: name -> head record (so listing is one HGETALL snapshot)
    P:blob:<hex>     string: bundle bytes
    P:refs:<hex>     set of names that use blob <hex>
    P:events         pub/sub channel: {"epoch": n, "names": [...]} after each change

A write is one optimistic transaction: WATCH ``P:epoch``, read through the watched
connection, then MULTI / blob SET / ref SADD / head HSET / INCR epoch / SREM / DEL /
PUBLISH / EXEC. Every write increments the epoch, so watching that one key makes
EXEC fail if *any* write committed in between; the transaction is then recomputed.
Readers see the state before or after a transaction, never a part of one.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import random
from collections.abc import Awaitable, Callable
from typing import TypeVar

import redis.asyncio as aioredis
from redis.asyncio.client import Pipeline
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import (
    ConnectionError as RedisConnectionError,
)
from redis.exceptions import (
    RedisError,
    ResponseError,
    WatchError,
)
from redis.exceptions import (
    TimeoutError as RedisTimeoutError,
)

from pemn.store.backend import Backend, Hint, Txn
from pemn.store.errors import StoreError, Unavailable
from pemn.store.names import content_hex
from pemn.store.options import RedisConfig, StoreOptions

__all__ = ["RedisBackend"]

log = logging.getLogger("pemn.store")
T = TypeVar("T")
_CONTENTION_ATTEMPTS = 200  # optimistic rounds before giving up (Unavailable)
_TRANSIENT = ("LOADING", "READONLY", "OOM", "MASTERDOWN", "BUSY", "TRYAGAIN", "CLUSTERDOWN")


def _bytes(value: object) -> bytes | None:
    """A reply as bytes (the client does not decode responses)."""
    if value is None or isinstance(value, bytes):
        return value
    if isinstance(value, str):
        return value.encode()
    raise TypeError(f"unexpected Redis reply {type(value).__name__}")


def _text(value: object) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


class RedisBackend(Backend):
    def __init__(self, display: str, config: RedisConfig, options: StoreOptions) -> None:
        self.display = display
        p = config.prefix
        self.prefix = p
        self.k_epoch = f"{p}:epoch"
        self.k_heads = f"{p}:heads"
        self.channel = f"{p}:events"
        # Retries are the store's job (bounded, with backoff, only where safe), so
        # the client makes exactly one attempt per command.
        self._client: aioredis.Redis = aioredis.Redis.from_url(
            config.url,
            socket_timeout=options.timeout,
            socket_connect_timeout=options.timeout,
            retry=Retry(NoBackoff(), 0),
            health_check_interval=30,
        )

    def k_blob(self, cid: str) -> str:
        return f"{self.prefix}:blob:{content_hex(cid)}"

    def k_refs(self, cid: str) -> str:
        return f"{self.prefix}:refs:{content_hex(cid)}"

    async def _call(self, key: str, fn: Callable[[], Awaitable[T]]) -> T:
        """Run a Redis call; connection trouble becomes ``Unavailable``."""
        try:
            return await fn()
        except WatchError:
            raise
        except (RedisConnectionError, RedisTimeoutError, OSError, TimeoutError) as exc:
            raise Unavailable(
                f"Redis not reachable: {exc or type(exc).__name__}", store=self.display, key=key
            ) from exc
        except ResponseError as exc:
            if str(exc).startswith(_TRANSIENT):
                raise Unavailable(f"Redis refused: {exc}", store=self.display, key=key) from exc
            raise StoreError(f"Redis error: {exc}", store=self.display, key=key) from exc
        except RedisError as exc:
            raise StoreError(f"Redis error: {exc}", store=self.display, key=key) from exc

    # ---------------------------------------------------------------- readers
    async def read_head(self, name: str) -> bytes | None:
        return _bytes(await self._call(self.k_heads, lambda: self._client.hget(self.k_heads, name)))

    async def read_heads(self) -> dict[str, bytes]:
        raw = await self._call(self.k_heads, lambda: self._client.hgetall(self.k_heads))
        return {_text(k): _bytes(v) or b"" for k, v in raw.items()}

    async def read_blob(self, cid: str) -> bytes | None:
        key = self.k_blob(cid)
        return _bytes(await self._call(key, lambda: self._client.get(key)))

    async def read_epoch(self) -> int:
        raw = await self._call(self.k_epoch, lambda: self._client.get(self.k_epoch))
        return int(raw) if raw else 0

    # ---------------------------------------------------------------- writers
    async def transact(self, fn: Callable[[Txn], Awaitable[T]]) -> tuple[T, int]:
        for _ in range(_CONTENTION_ATTEMPTS):
            try:
                return await self._call(self.k_epoch, lambda: self._transact_once(fn))
            except WatchError:
                await asyncio.sleep(random.random() * 0.01)
        raise Unavailable(
            f"gave up after {_CONTENTION_ATTEMPTS} rounds of write contention",
            store=self.display,
            key=self.k_epoch,
        )

    async def _transact_once(self, fn: Callable[[Txn], Awaitable[T]]) -> tuple[T, int]:
        async with self._client.pipeline(transaction=True) as pipe:
            await pipe.watch(self.k_epoch)
            txn = _RedisTxn(self, pipe)
            result = await fn(txn)
            epoch = await txn.epoch()
            c = txn.changes
            if not c:
                return result, epoch
            pipe.multi()
            for cid, name in sorted(c.add_refs):
                pipe.sadd(self.k_refs(cid), name)
            for cid, data in c.blobs.items():
                pipe.set(self.k_blob(cid), data)
            for name, record in c.heads.items():
                if record is None:
                    pipe.hdel(self.k_heads, name)
                else:
                    pipe.hset(self.k_heads, name, record)
            pipe.incr(self.k_epoch)
            at = len(pipe.command_stack) - 1  # MULTI is not in the stack
            for cid, name in sorted(c.remove_refs):
                pipe.srem(self.k_refs(cid), name)
            for cid in sorted(c.delete_blobs):
                pipe.delete(self.k_blob(cid))
            message = {"epoch": epoch + 1, "names": sorted(c.heads)}
            pipe.publish(self.channel, json.dumps(message))
            results = await pipe.execute()
            return result, int(results[at])

    async def open_hint(self) -> Hint:
        return _RedisHint(self._client, self.channel, self.display)

    async def aclose(self) -> None:
        await self._client.aclose()


class _RedisTxn(Txn):
    def __init__(self, backend: RedisBackend, pipe: Pipeline) -> None:
        super().__init__()
        self._b = backend
        self._pipe = pipe
        self._epoch: int | None = None

    async def epoch(self) -> int:
        if self._epoch is None:
            raw = await self._pipe.get(self._b.k_epoch)
            self._epoch = int(raw) if raw else 0
        return self._epoch

    async def head(self, name: str) -> bytes | None:
        return _bytes(await self._pipe.hget(self._b.k_heads, name))

    async def ref_names(self, cid: str) -> set[str]:
        raw = await self._pipe.smembers(self._b.k_refs(cid))
        return {_text(n) for n in raw}


class _RedisHint(Hint):
    """Subscribes to the events channel in a task; re-subscribes after an outage.

    The event is set on every message and after every (re)subscription, so the
    watcher re-reads the epoch when it may have missed messages."""

    def __init__(self, client: aioredis.Redis, channel: str, display: str) -> None:
        super().__init__()
        self._client = client
        self._channel = channel
        self._display = display
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
                with contextlib.suppress(RedisError, OSError):
                    await pubsub.aclose()
            await asyncio.sleep(backoff)
            backoff = min(backoff * 2, 2.0)

    async def aclose(self) -> None:
        self._task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._task
