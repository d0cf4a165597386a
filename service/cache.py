"""A generic byte-bounded LRU cache with an injected loader, used for every tier of
residency (packed tasks, materialized weights, ONNX sessions, backbones).

- Bounded in bytes: ``size(value)`` is counted on insert; the least recently used
  entries are evicted until the total fits (the newest entry always stays, so one
  value larger than the budget is still served, alone). A budget of 0 keeps
  nothing: every lookup loads, and the caller uses the value once.
- Async lookups (``get``) are single-flight per key: concurrent callers of one
  missing key share one load, which runs as its own task, so a caller that gives
  up never cancels a load others wait for; a failed load is not cached.
- Sync lookups (``get_now``) load inline: for a tier used from one thread (the
  inference thread's materialized weights), where the loader is cheap tensor work.
- Thread-safe bookkeeping: ``peek``, ``cached_keys`` and stats may be read from another
  thread (the event loop reads the inference thread's tier for ``/status``).
Callers hold references to the values they got, so an eviction never changes
what an in-flight request runs on; memory is freed when the last holder lets go.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Hashable
from dataclasses import dataclass
from typing import Generic, TypeVar

__all__ = ["ByteLRU", "CacheStats"]

K = TypeVar("K", bound=Hashable)
V = TypeVar("V")


@dataclass(frozen=True)
class CacheStats:
    items: int
    bytes: int
    capacity: int
    hits: int
    misses: int
    evictions: int
    load_seconds: float  # total time spent in loads


class ByteLRU(Generic[K, V]):
    def __init__(
        self,
        name: str,
        capacity: int,
        size: Callable[[V], int],
        loader: Callable[[K], Awaitable[V]] | None = None,
        on_evict: Callable[[K, V], None] | None = None,
    ) -> None:
        self.name = name
        self.capacity = capacity
        self._size = size
        self._loader = loader
        self._on_evict = on_evict
        self._entries: OrderedDict[K, tuple[V, int]] = OrderedDict()
        self._bytes = 0
        self._lock = threading.Lock()
        self._inflight: dict[K, asyncio.Task[V]] = {}
        self.hits = self.misses = self.evictions = 0
        self.load_seconds = 0.0

    def __contains__(self, key: K) -> bool:
        return key in self._entries

    def __len__(self) -> int:
        return len(self._entries)

    @property
    def bytes(self) -> int:
        return self._bytes

    def peek(self, key: K) -> V | None:
        """The cached value (marks it recently used), or None; never loads."""
        with self._lock:
            hit = self._entries.get(key)
            if hit is None:
                return None
            self._entries.move_to_end(key)
            self.hits += 1
            return hit[0]

    def cached_keys(self) -> list[K]:
        """A snapshot of the cached keys, least recently used first."""
        with self._lock:
            return list(self._entries)

    def put(self, key: K, value: V) -> V:
        """Insert ``value`` (replacing an entry of the same key), then evict the least
        recently used entries beyond the capacity; returns ``value``."""
        if self.capacity <= 0:
            return value
        nbytes = self._size(value)
        evicted: list[tuple[K, V]] = []
        with self._lock:
            old = self._entries.pop(key, None)
            if old is not None:
                self._bytes -= old[1]
            self._entries[key] = (value, nbytes)
            self._bytes += nbytes
            while self._bytes > self.capacity and len(self._entries) > 1:
                k, (v, n) = self._entries.popitem(last=False)
                self._bytes -= n
                self.evictions += 1
                evicted.append((k, v))
        if self._on_evict is not None:
            for k, v in evicted:
                self._on_evict(k, v)
        return value

    def discard(self, key: K) -> bool:
        """Drop ``key`` if cached (no eviction callback); True if it was."""
        with self._lock:
            old = self._entries.pop(key, None)
            if old is None:
                return False
            self._bytes -= old[1]
            return True

    def clear(self) -> None:
        with self._lock:
            self._entries.clear()
            self._bytes = 0

    def get_now(self, key: K, load: Callable[[K], V]) -> V:
        """The cached value, or ``load(key)`` called inline and inserted."""
        hit = self.peek(key)
        if hit is not None:
            return hit
        with self._lock:
            self.misses += 1
        start = time.perf_counter()
        value = load(key)
        self.load_seconds += time.perf_counter() - start
        return self.put(key, value)

    async def get(self, key: K, loader: Callable[[K], Awaitable[V]] | None = None) -> V:
        """The cached value, or the result of one shared load."""
        hit = self.peek(key)
        if hit is not None:
            return hit
        load = loader or self._loader
        if load is None:
            raise TypeError(f"cache {self.name!r} has no loader")
        task = self._inflight.get(key)
        if task is None:
            with self._lock:
                self.misses += 1

            async def work() -> V:
                start = time.perf_counter()
                try:
                    return self.put(key, await load(key))
                finally:
                    self.load_seconds += time.perf_counter() - start
                    self._inflight.pop(key, None)

            task = asyncio.ensure_future(work())
            # retrieved even if every caller left, so a failure is never "unretrieved"
            task.add_done_callback(lambda t: t.cancelled() or t.exception())
            self._inflight[key] = task
        return await asyncio.shield(task)

    def stats(self) -> CacheStats:
        with self._lock:
            return CacheStats(
                len(self._entries),
                self._bytes,
                self.capacity,
                self.hits,
                self.misses,
                self.evictions,
                self.load_seconds,
            )
