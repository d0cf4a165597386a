"""The core's single homes of small helpers: retry with backoff, atomic writes,
content ids, device names, and the caches object."""

import asyncio
import os
import stat
import time

import pytest
import torch

from pemn import caches
from pemn.bundle.spec import arch_layout
from pemn.content import content_id
from pemn.devices import resolve_device
from pemn.errors import InvalidParameterError
from pemn.files import atomic_write
from pemn.retry import Backoff, RetryPolicy


class _Down(Exception):
    pass


def _flaky(failures: int, calls: list[float]):
    def call() -> str:
        calls.append(time.monotonic())
        if len(calls) <= failures:
            raise _Down(f"down ({len(calls)})")
        return "up"

    return call


def _is_down(e: BaseException) -> bool:
    return isinstance(e, _Down)


def test_retry_until_success_with_growing_pauses():
    calls: list[float] = []
    pauses: list[float] = []
    policy = RetryPolicy(_is_down, first=0.01, cap=0.02, on_retry=lambda e, p: pauses.append(p))
    result = policy.call(_flaky(3, calls))
    assert result == "up" and len(calls) == 4
    assert pauses == [0.01, 0.02, 0.02]


def test_retry_gives_up_after_attempts_or_deadline_and_raises_the_error():
    calls: list[float] = []
    with pytest.raises(_Down, match=r"down \(3\)"):
        RetryPolicy(_is_down, first=0.001, attempts=3).call(_flaky(10, calls))
    calls.clear()
    with pytest.raises(_Down, match=r"down \(1\)"):  # no time to wait: one call
        RetryPolicy(_is_down, first=0.5, deadline_s=0).call(_flaky(10, calls))
    calls.clear()
    with pytest.raises(_Down):
        RetryPolicy(_is_down, first=0.05, cap=0.05, deadline_s=0.2).call(_flaky(100, calls))
    # the last pause is cut short so that the final call is made at the deadline
    assert 0.19 <= calls[-1] - calls[0] < 0.2 + 0.05 + 0.5


def test_retry_does_not_retry_other_errors():
    calls = []

    def broken() -> None:
        calls.append(1)
        raise KeyError("bug")

    with pytest.raises(KeyError):
        RetryPolicy(_is_down, first=0.001).call(broken)
    assert calls == [1]


def test_jittered_pauses_stay_within_half_to_one_and_a_half():
    b = Backoff(1.0, 8.0, jitter=True)
    for failures, base in ((1, 1.0), (3, 4.0), (9, 8.0)):
        for _ in range(50):
            assert 0.5 * base <= b.delay(failures) < 1.5 * base
    with pytest.raises(ValueError, match="first <= cap"):
        Backoff(2.0, 1.0)


def test_async_retry():
    calls: list[float] = []
    sync = _flaky(2, calls)

    async def call() -> str:
        return sync()

    assert asyncio.run(RetryPolicy(_is_down, first=0.001).call_async(call)) == "up"
    assert len(calls) == 3


def test_atomic_write_replaces_whole_files_with_the_usual_mode(tmp_path):
    path = tmp_path / "out.bin"
    path.write_bytes(b"old")
    atomic_write(path, b"new bytes")
    assert path.read_bytes() == b"new bytes"
    mask = os.umask(0)
    os.umask(mask)
    assert stat.S_IMODE(path.stat().st_mode) == 0o666 & ~mask
    with pytest.raises(OSError):
        atomic_write(tmp_path / "missing" / "x", b"data")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.bin"]  # no temporary left


def test_content_id_is_the_sha256_of_the_bytes():
    empty = "sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
    assert content_id(b"") == empty and content_id(memoryview(b"")) == empty


def test_resolve_device_names_and_refusals():
    assert resolve_device("cpu") == torch.device("cpu")
    want = "cuda" if torch.cuda.is_available() else "cpu"
    assert resolve_device("auto").type == want and resolve_device().type == want
    for bad in ("tpu", "banana", "cuda:99"):
        with pytest.raises(InvalidParameterError, match="device"):
            resolve_device(bad)


def test_lru_keeps_the_most_recently_used():
    lru: caches.LRU[int] = caches.LRU(2)
    lru.put("a", 1)
    lru.put("b", 2)
    assert lru.get("a") == 1  # a is now the most recent
    lru.put("c", 3)
    assert (lru.get("a"), lru.get("b"), lru.get("c")) == (1, None, 3)
    made = []
    assert lru.get_or_make("d", lambda: made.append(1) or 4) == 4
    assert lru.get_or_make("d", lambda: made.append(1) or 5) == 4 and made == [1]
    with pytest.raises(ValueError, match="at least one"):
        caches.LRU(0)


def test_one_clear_empties_every_core_cache():
    first = arch_layout("mlp", {"hidden": [8]})
    assert arch_layout("mlp", {"hidden": [8]}) is first  # cached
    assert len(caches.CACHES.layouts) >= 1
    caches.clear()
    assert all(len(c) == 0 for c in caches.CACHES.all().values())
    assert set(caches.CACHES.all()) == {"layouts", "trees", "digests", "cpu_parts", "reuse"}
    assert arch_layout("mlp", {"hidden": [8]}) is not first  # rebuilt
