"""Work done by the concurrency tests in threads and in separate processes
(module-level so that ``multiprocessing`` can import it under ``spawn``)."""

from __future__ import annotations

import contextlib
import hashlib
import time
from typing import Any

from pemn.store import NotFound, PreconditionFailed, open_store
from tests.store.bundles import bundle


def seed(name: str, writer: int, i: int) -> int:
    """A distinct bundle seed per (name, writer, put); every 4th put uses one of
    three seeds shared by all names and writers, so blobs are shared and re-put."""
    if i % 4 == 3:
        return 1_000_000 + i % 3
    return int(hashlib.sha256(f"{name}/{writer}/{i}".encode()).hexdigest()[:8], 16)


def allowed(names: list[str], writers: int, puts: int) -> dict[str, set[str]]:
    """Content ids a reader may legitimately see under each name."""
    out: dict[str, set[str]] = {}
    for name in names:
        ids = set()
        for w in range(writers):
            for i in range(puts):
                data = bundle(seed(name, w, i))
                ids.add("sha256:" + hashlib.sha256(data).hexdigest())
        out[name] = ids
    return out


def write(
    url: str, options: dict[str, Any], names: list[str], writer: int, puts: int, cas: bool
) -> list[tuple[str, int, bool]]:
    """Put ``puts`` bundles round-robin over ``names``; returns (name, version,
    created) per successful put. With ``cas``, each put names the content id it read
    (``if_match``) and a lost race (``PreconditionFailed``) is retried with a fresh
    read."""
    done = []
    with open_store(url, **options) as store:
        for i in range(puts):
            name = names[(writer + i) % len(names)]
            data = bundle(seed(name, writer, i))
            while True:
                expected = None
                if cas:
                    with contextlib.suppress(NotFound):
                        expected = store.info(name).content_id
                try:
                    r = store.put(name, data, if_match=expected)
                except PreconditionFailed:
                    continue
                break
            done.append((name, r.version, r.created))
    return done


def read(
    url: str,
    options: dict[str, Any],
    names: list[str],
    ok: dict[str, set[str]],
    seconds: float,
    deletable: frozenset[str] = frozenset(),
    pause: float = 0.005,
) -> dict[str, int]:
    """Read every name for ``seconds``; check each result: verified bytes that some
    writer put under that name, and no ``NotFound`` once a name that nobody deletes
    has appeared. Returns reads per outcome."""
    counts = {"ok": 0, "not_found": 0}
    seen: set[str] = set()
    deadline = time.monotonic() + seconds
    with open_store(url, **options) as store:
        while time.monotonic() < deadline:
            for name in names:
                try:
                    got = store.get(name)
                except NotFound:
                    if name in seen and name not in deletable:
                        raise AssertionError(f"{name} vanished") from None
                    counts["not_found"] += 1
                    continue
                seen.add(name)
                digest = "sha256:" + hashlib.sha256(got.data).hexdigest()
                if digest != got.content_id or got.content_id not in ok[name]:
                    raise AssertionError(f"{name}: read bytes {digest} as {got.content_id}")
                counts["ok"] += 1
            for info in store.list():
                if info.content_id not in ok[info.name]:
                    raise AssertionError(f"list shows {info.content_id} for {info.name}")
            time.sleep(pause)  # leave some of the (single-threaded) test server to writers
    return counts
