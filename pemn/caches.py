"""The process-wide caches of the core, held in one explicit object.

``CACHES`` (a ``CoreCaches``) is the process's instance; ``clear()`` empties every
cache in it (benchmarks of cold starts, tests). Each cache is a bounded, thread-safe
LRU map; the module that fills a cache owns its key, its value and its admission
rule, and documents them. No torch here: values are opaque.

=============  ==================================  ====================================
cache          key                                 value (filled by)
=============  ==================================  ====================================
``layouts``    (arch, canonical config JSON)       ``ArchLayout`` (pemn.bundle.spec)
``trees``      (arch, canonical config JSON)       meta-device module tree (pemn.bundle.spec)
``digests``    backbone fingerprint                prototype digest (pemn.bundle.reader)
``cpu_parts``  (arch, canonical config JSON)       derived buffers (e.g. ViT positions)
                                                   of the architecture (pemn.materialize)
``reuse``      (arch, canonical config JSON)       uses of each weight per sample
                                                   (pemn.materialize.arch_weight_reuse)
=============  ==================================  ====================================
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Callable, Hashable
from typing import Any, Generic, TypeVar

__all__ = ["CACHES", "LRU", "CoreCaches", "clear"]

V = TypeVar("V")


class LRU(Generic[V]):
    """A thread-safe map of at most ``maxsize`` entries; the least recently used go."""

    def __init__(self, maxsize: int) -> None:
        if maxsize < 1:
            raise ValueError(f"an LRU cache holds at least one entry, got maxsize={maxsize}")
        self.maxsize = maxsize
        self._data: OrderedDict[Hashable, V] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, key: Hashable) -> V | None:
        """The value of ``key`` (now the most recently used), or None."""
        with self._lock:
            hit = self._data.get(key)
            if hit is not None:
                self._data.move_to_end(key)
            return hit

    def put(self, key: Hashable, value: V) -> None:
        with self._lock:
            self._data[key] = value
            self._data.move_to_end(key)
            while len(self._data) > self.maxsize:
                self._data.popitem(last=False)

    def get_or_make(self, key: Hashable, make: Callable[[], V]) -> V:
        """The value of ``key``, made by ``make()`` (outside the lock) and kept when absent.
        Two threads missing at once may both make it; the later one is kept."""
        hit = self.get(key)
        if hit is None:
            hit = make()
            self.put(key, hit)
        return hit

    def clear(self) -> None:
        with self._lock:
            self._data.clear()

    def __len__(self) -> int:
        return len(self._data)


class CoreCaches:
    """Every process-wide cache of the core (see the module's table)."""

    def __init__(self) -> None:
        self.layouts: LRU[Any] = LRU(64)
        self.trees: LRU[Any] = LRU(8)
        self.digests: LRU[str] = LRU(4096)
        self.cpu_parts: LRU[Any] = LRU(16)
        self.reuse: LRU[float] = LRU(64)

    def all(self) -> dict[str, LRU[Any]]:
        return {k: v for k, v in vars(self).items() if isinstance(v, LRU)}

    def clear(self) -> None:
        """Empty every cache."""
        for cache in self.all().values():
            cache.clear()


CACHES = CoreCaches()


def clear() -> None:
    """Empty every cache of ``CACHES``."""
    CACHES.clear()
