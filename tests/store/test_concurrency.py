"""Several writers and readers on the same names at once, in threads (each with its
own store client) and in separate processes. Readers only ever get complete,
verified bundles that some writer put under that name; afterwards every retained
version is readable, no two acknowledged puts got the same version number, the
latest is the highest acknowledged one, and the version objects are exactly the
retained versions (nothing leaked, nothing missing)."""

from __future__ import annotations

import multiprocessing
import os
import time
from collections.abc import Callable, Iterator
from concurrent.futures import Executor, Future, ProcessPoolExecutor, ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest

from pemn.store import NotFound, Store, open_store
from tests.store import _workers
from tests.store.conftest import Raw, Target, store_options

NAMES = ["alpha", "beta", "gamma"]
DELETED = frozenset({"gamma"})  # one name is deleted now and then while in use
RETAIN = 3


def _delete_now_and_then(url: str, options: dict[str, Any], stop: Path) -> int:
    deleted = 0
    with open_store(url, **options) as store:
        while not stop.exists():
            try:
                store.delete("gamma")
                deleted += 1
            except NotFound:
                pass
            time.sleep(0.05)
    return deleted


def _read_until(
    stop: Path,
    url: str,
    options: dict[str, Any],
    names: list[str],
    ok: dict[str, set[str]],
    pause: float,
) -> dict[str, int]:
    total = {"ok": 0, "not_found": 0}
    while True:
        done = stop.exists()
        counts = _workers.read(url, options, names, ok, 0.5, DELETED, pause)
        for k, v in counts.items():
            total[k] += v
        if done:
            return total


def check_consistent(store: Store, raw: Raw) -> dict[str, list[int]]:
    """Every retained version verifies; the version objects are the retained ones."""
    used: set[tuple[str, int]] = set()
    out = {}
    for info in store.list():
        versions = store.versions(info.name)
        numbers = [v.version for v in versions]
        assert numbers == sorted(set(numbers)) and 1 <= len(numbers) <= RETAIN
        assert numbers[-1] == info.version
        for v in versions:
            assert store.get(info.name, v.version).content_id == v.content_id
            used.add((info.name, v.version))
        out[info.name] = numbers
    # A put that lost its race removes its version object; none is left over here
    # (no writer died), and none that a head uses is missing.
    assert {k for k in raw.version_keys() if k[0] in out} == used
    return out


def hammer(
    pool: Executor, target: Target, tmp: Path, writers: int, puts: int, readers: int
) -> tuple[list[list[tuple[str, int, bool]]], list[dict[str, int]]]:
    # moto serves one request at a time on a busy 2-core machine: allow long writes.
    options = store_options(target, retain=RETAIN, write_timeout=60)
    stop = tmp / f"stop-{time.monotonic_ns()}"
    ok = _workers.allowed(NAMES, writers, puts)
    # moto serves one request at a time: S3 readers pause more between rounds.
    pause = 0.2 if target.kind == "s3" else 0.005
    reads: list[Future[dict[str, int]]] = [
        pool.submit(_read_until, stop, target.url, options, NAMES, ok, pause=pause)
        for _ in range(readers)
    ]
    deleter = pool.submit(_delete_now_and_then, target.url, options, stop)
    writes = [
        pool.submit(_workers.write, target.url, options, NAMES, w, puts, w == 0)
        for w in range(writers)
    ]
    try:
        results = [f.result(timeout=300) for f in writes]
    finally:
        stop.touch()
    counts = [f.result(timeout=60) for f in reads]
    assert deleter.result(timeout=60) >= 0
    return results, counts


def check_results(
    store: Store, target: Target, results: list[list[tuple[str, int, bool]]], counts: list[dict]
) -> None:
    assert all(c["ok"] > 0 for c in counts), counts
    final = check_consistent(store, target.raw)
    for name in sorted(set(NAMES) - DELETED):
        created = sorted(v for r in results for n, v, c in r if n == name and c)
        # Every created put got its own number (no lost update, no duplicate); a
        # number may be skipped where a writer lost the race to create it.
        assert len(created) == len(set(created)) > 0, (name, created)
        assert final[name][-1] == created[-1]


@pytest.mark.timeout(300)
def test_threads(target: Target, make_store: Callable[..., Store], tmp_path: Path) -> None:
    puts = 4 if target.kind == "s3" else 12
    with ThreadPoolExecutor(max_workers=8) as pool:
        results, counts = hammer(pool, target, tmp_path, writers=4, puts=puts, readers=3)
    check_results(make_store(retain=RETAIN), target, results, counts)


@pytest.fixture(scope="module")
def processes() -> Iterator[ProcessPoolExecutor]:
    """Six worker processes, shared by the backends. A fork server that has imported
    the store once forks them, instead of each paying for a fresh interpreter."""
    ctx = multiprocessing.get_context("forkserver")
    ctx.set_forkserver_preload(["tests.store._workers"])
    with ProcessPoolExecutor(max_workers=6, mp_context=ctx) as pool:
        pids = set(pool.map(_pid_after, [0.3] * 12))
        assert len(pids) == 6
        yield pool


def _pid_after(seconds: float) -> int:
    time.sleep(seconds)
    return os.getpid()


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_processes(
    target: Target,
    make_store: Callable[..., Store],
    tmp_path: Path,
    processes: ProcessPoolExecutor,
) -> None:
    puts = 4 if target.kind == "s3" else 10
    results, counts = hammer(processes, target, tmp_path, writers=3, puts=puts, readers=2)
    check_results(make_store(retain=RETAIN), target, results, counts)
