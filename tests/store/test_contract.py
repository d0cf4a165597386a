"""The store contract, run identically on the directory, Redis and S3 backends."""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Callable, Mapping
from typing import Any

import pytest

from pemn.bundle import inspect_bundle
from pemn.store import (
    Corrupt,
    InvalidBundle,
    InvalidName,
    NeedsMigration,
    NotFound,
    PreconditionFailed,
    Store,
    StoreError,
    TooLarge,
    default_validator,
    open_store,
)
from tests.store.bundles import bundle, corrupt, summary_seed
from tests.store.conftest import Target, store_options


def sha(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def test_put_then_get_round_trips_verified_bytes(store: Store) -> None:
    data = bundle(1)
    r = store.put("alpha", data)
    assert (r.name, r.version, r.content_id, r.size, r.created, r.versions) == (
        "alpha",
        1,
        sha(data),
        len(data),
        True,
        1,
    )
    assert r.summary == inspect_bundle(data)
    got = store.get("alpha")
    assert got.data == data
    assert (got.name, got.version, got.content_id, got.size) == ("alpha", 1, sha(data), len(data))
    assert got.created_at == r.created_at


def test_versions_count_up_and_old_ones_stay_readable(store: Store) -> None:
    results = [store.put("alpha", bundle(i)) for i in range(3)]
    assert [r.version for r in results] == [1, 2, 3]
    assert store.get("alpha").data == bundle(2)
    for i in range(3):
        got = store.get("alpha", version=i + 1)
        assert (got.version, got.data) == (i + 1, bundle(i))
    infos = store.versions("alpha")
    assert [v.version for v in infos] == [1, 2, 3]
    assert [v.content_id for v in infos] == [sha(bundle(i)) for i in range(3)]
    assert [v.size for v in infos] == [len(bundle(i)) for i in range(3)]
    assert infos[0].created_at <= infos[1].created_at <= infos[2].created_at


def test_reput_of_latest_is_idempotent(store: Store, target: Target) -> None:
    first = store.put("alpha", bundle(1))
    marker = store.marker()
    again = store.put("alpha", bundle(1))
    assert (again.version, again.content_id, again.created) == (1, first.content_id, False)
    assert store.marker() == marker
    assert [v.version for v in store.versions("alpha")] == [1]
    assert target.raw.version_keys() == {("alpha", 1)}


def test_reput_of_an_older_version_makes_a_new_version(store: Store) -> None:
    store.put("alpha", bundle(1))
    store.put("alpha", bundle(2))
    back = store.put("alpha", bundle(1))
    assert (back.version, back.created) == (3, True)
    assert store.get("alpha").data == bundle(1)
    assert [v.content_id for v in store.versions("alpha")] == [
        sha(bundle(1)),
        sha(bundle(2)),
        sha(bundle(1)),
    ]


def test_list_shows_latest_version_and_its_summary(store: Store) -> None:
    assert store.list() == []
    store.put("beta", bundle(5))
    store.put("alpha", bundle(1))
    store.put("alpha", bundle(2))
    infos = store.list()
    assert [i.name for i in infos] == ["alpha", "beta"]
    alpha, beta = infos
    assert (alpha.version, alpha.content_id, alpha.size, alpha.versions) == (
        2,
        sha(bundle(2)),
        len(bundle(2)),
        2,
    )
    assert summary_seed(alpha.summary) == 2
    assert summary_seed(beta.summary) == 5
    assert alpha.summary == inspect_bundle(bundle(2))  # the bundle reader's summary
    assert store.info("alpha") == alpha


def test_list_and_info_never_read_version_objects(store: Store, target: Target) -> None:
    store.put("alpha", bundle(3))
    target.raw.delete_version("alpha", 1)  # listing must not need it
    (info,) = store.list()
    assert summary_seed(info.summary) == 3
    assert store.info("alpha") == info


def test_missing_things_raise_not_found_naming_store_and_key(store: Store) -> None:
    for call in (
        lambda: store.get("ghost"),
        lambda: store.versions("ghost"),
        lambda: store.info("ghost"),
        lambda: store.delete("ghost"),
        lambda: store.rollback("ghost", 1),
    ):
        with pytest.raises(NotFound) as exc:
            call()
        assert exc.value.code == "store.not_found"
        assert "ghost" in str(exc.value) and store.url in str(exc.value)
    store.put("alpha", bundle(1))
    for call in (lambda: store.get("alpha", version=7), lambda: store.rollback("alpha", 7)):
        with pytest.raises(NotFound, match="no version 7 \\(retained: 1\\)") as exc:
            call()
        assert exc.value.key == "alpha@7"


def test_bad_arguments_are_refused_before_any_io(store: Store) -> None:
    store.put("alpha", bundle(1))
    marker = store.marker()
    for bad in (0, -1, True, 1.0, "1"):
        with pytest.raises(ValueError):
            store.get("alpha", version=bad)  # type: ignore[arg-type]
        with pytest.raises(ValueError):
            store.rollback("alpha", bad)  # type: ignore[arg-type]
    for bad_id in ("", "sha256:", "md5:" + "0" * 32, "sha256:" + "A" * 64, "W/x", 5):
        with pytest.raises(InvalidName, match="invalid content id"):
            store.put("alpha", bundle(2), if_match=bad_id)  # type: ignore[arg-type]
        with pytest.raises(InvalidName):
            store.delete("alpha", if_match=bad_id)  # type: ignore[arg-type]
    for bad_timeout in (0, -1, True, "5", 61):
        with pytest.raises(ValueError, match="timeout must be"):
            store.put("alpha", bundle(2), timeout=bad_timeout)  # type: ignore[arg-type]
    assert store.marker() == marker


def test_delete_removes_the_name_and_its_versions(store: Store, target: Target) -> None:
    store.put("alpha", bundle(1))
    store.put("alpha", bundle(2))
    store.put("beta", bundle(2))  # the same bytes under another name: its own copy
    marker = store.marker()
    store.delete("alpha")
    assert store.marker() != marker
    for call in (
        lambda: store.get("alpha"),
        lambda: store.info("alpha"),
        lambda: store.versions("alpha"),
    ):
        with pytest.raises(NotFound):
            call()
    with pytest.raises(NotFound):
        store.delete("alpha")  # deleting again: nothing there
    assert [i.name for i in store.list()] == ["beta"]
    assert target.raw.version_keys() == {("beta", 1)}
    assert store.get("beta").data == bundle(2)
    # The name can be used again; version numbers are never reused, so (name, version)
    # always means the same bytes.
    assert store.put("alpha", bundle(9)).version == 3
    assert [v.version for v in store.versions("alpha")] == [3]


def test_retention_keeps_the_newest_versions(
    make_store: Callable[..., Store], target: Target
) -> None:
    store = make_store(retain=3)
    store.put("other", bundle(0))
    for i in range(5):
        store.put("alpha", bundle(i))
    assert [v.version for v in store.versions("alpha")] == [3, 4, 5]
    with pytest.raises(NotFound, match="retained: 3, 4, 5"):
        store.get("alpha", version=2)
    assert store.get("alpha", version=3).data == bundle(2)
    assert target.raw.version_keys() == {("other", 1)} | {("alpha", v) for v in (3, 4, 5)}
    assert store.get("other").data == bundle(0)
    assert store.info("alpha").versions == 3


def test_retain_one_keeps_only_the_latest(make_store: Callable[..., Store], target: Target) -> None:
    store = make_store(retain=1)
    for i in range(3):
        store.put("alpha", bundle(i))
    assert [v.version for v in store.versions("alpha")] == [3]
    assert target.raw.version_keys() == {("alpha", 3)}


def test_if_match_makes_replace_and_delete_conditional(store: Store) -> None:
    with pytest.raises(PreconditionFailed) as exc:
        store.put("alpha", bundle(1), if_match="*")  # "*": the name must exist
    assert (exc.value.expected, exc.value.current) == ("*", None)
    first = store.put("alpha", bundle(1))
    second = store.put("alpha", bundle(2), if_match=first.content_id)
    assert second.version == 2
    marker = store.marker()
    for call in (
        lambda: store.put("alpha", bundle(3), if_match=first.content_id),  # stale
        lambda: store.delete("alpha", if_match=first.content_id),
        lambda: store.rollback("alpha", 1, if_match=first.content_id),
    ):
        with pytest.raises(PreconditionFailed) as exc:
            call()
        assert exc.value.code == "store.precondition_failed"
        assert (exc.value.expected, exc.value.current) == (first.content_id, second.content_id)
        assert "alpha" in str(exc.value) and store.url in str(exc.value)
    assert store.marker() == marker
    assert [v.version for v in store.versions("alpha")] == [1, 2]
    assert store.put("alpha", bundle(3), if_match="*").version == 3
    store.delete("alpha", if_match=sha(bundle(3)))
    with pytest.raises(NotFound):
        store.get("alpha")


def test_rollback_moves_the_latest_pointer(store: Store, target: Target) -> None:
    for i in range(3):
        store.put("alpha", bundle(i))
    marker = store.marker()
    info = store.rollback("alpha", 1)
    assert (info.version, info.content_id, info.versions) == (1, sha(bundle(0)), 3)
    assert summary_seed(info.summary) == 0  # the summary of version 1, not of 3
    assert store.marker() != marker
    assert store.info("alpha") == info == store.list()[0]
    assert (store.get("alpha").version, store.get("alpha").data) == (1, bundle(0))
    assert [v.version for v in store.versions("alpha")] == [1, 2, 3]  # nothing written
    assert len(target.raw.version_keys()) == 3
    marker = store.marker()
    assert store.rollback("alpha", 1) == info  # already the latest: no change
    assert store.marker() == marker
    # The next put takes the next unused number; rolling forward is another rollback.
    assert store.put("alpha", bundle(7)).version == 4
    assert store.rollback("alpha", 3).content_id == sha(bundle(2))


def test_the_marker_moves_with_every_change_and_nothing_else(store: Store) -> None:
    seen = [store.marker()]

    def moved() -> bool:
        seen.append(store.marker())
        return seen[-1] != seen[-2]

    store.put("alpha", bundle(1))
    assert moved()
    store.put("alpha", bundle(1))  # no change
    assert not moved()
    store.put("beta", bundle(3))
    assert moved()
    for fail in (
        lambda: store.put("alpha", bundle(4), if_match=sha(bundle(9))),
        lambda: store.put("alpha", corrupt(bundle(4))),
        lambda: store.delete("ghost"),
    ):
        with pytest.raises(StoreError):
            fail()
    assert not moved()
    store.get("alpha")
    store.list()
    assert not moved()
    store.delete("beta")
    assert moved()
    assert len(set(seen)) == 4


def _damaged(kind: str) -> bytes:
    data = bundle(2)
    if kind == "mask bit flipped":
        return corrupt(data)
    if kind == "truncated":
        return data[:-7]
    if kind == "header length damaged":
        return bytes([data[0] ^ 0x01]) + data[1:]
    if kind == "trailing bytes":
        return data + b"\x00"
    if kind == "empty":
        return b""
    return b"not a bundle at all" * 10


DAMAGED = [
    ("mask bit flipped", "bundle.popcount_mismatch"),
    ("truncated", "bundle.truncated"),
    ("header length damaged", "bundle.header_invalid"),
    ("trailing bytes", None),
    ("empty", "bundle.truncated"),
    ("junk", None),
]


@pytest.mark.parametrize(("kind", "bundle_code"), DAMAGED, ids=[k for k, _ in DAMAGED])
def test_invalid_bundle_is_refused_before_anything_is_written(
    store: Store, target: Target, kind: str, bundle_code: str | None
) -> None:
    store.put("alpha", bundle(1))
    before = (store.marker(), target.raw.version_keys(), store.list())
    for name in ("alpha", "fresh"):
        with pytest.raises(InvalidBundle) as exc:
            store.put(name, _damaged(kind))
        assert exc.value.code == "store.invalid_bundle"
        assert exc.value.bundle_code is not None and exc.value.bundle_code.startswith("bundle.")
        if bundle_code:
            assert exc.value.bundle_code == bundle_code
        assert name in str(exc.value) and store.url in str(exc.value)
        assert isinstance(exc.value, ValueError)
    assert (store.marker(), target.raw.version_keys(), store.list()) == before


def test_oversized_bundle_is_refused_before_validation_or_writing(
    make_store: Callable[..., Store], target: Target
) -> None:
    calls: list[int] = []

    def spy(data: bytes) -> Mapping[str, Any]:
        calls.append(len(data))
        return default_validator(data)

    limit = len(bundle(1)) + 1000
    store = make_store(max_bundle_bytes=limit, validator=spy)
    store.put("alpha", bundle(1))
    assert len(calls) == 1
    big = bundle(2, size=limit + 5000)
    assert len(big) > limit
    marker = store.marker()
    with pytest.raises(TooLarge) as exc:
        store.put("alpha", big)
    assert (exc.value.size, exc.value.limit, exc.value.code) == (len(big), limit, "store.too_large")
    assert isinstance(exc.value, InvalidBundle)
    assert "max_bundle_bytes" in str(exc.value) and "alpha" in str(exc.value)
    assert len(calls) == 1  # refused before validation
    assert store.marker() == marker
    assert target.raw.version_keys() == {("alpha", 1)}
    assert store.get("alpha").data == bundle(1)


def test_put_accepts_only_bytes(store: Store) -> None:
    with pytest.raises(TypeError):
        store.put("alpha", "text")  # type: ignore[arg-type]
    assert store.put("alpha", bytearray(bundle(1))).content_id == sha(bundle(1))
    assert store.put("alpha", memoryview(bundle(2))).version == 2


def test_flipped_byte_in_a_version_object_is_detected(store: Store, target: Target) -> None:
    store.put("alpha", bundle(1))
    store.put("alpha", bundle(2))
    target.raw.flip_byte("alpha", 1)
    with pytest.raises(Corrupt) as exc:
        store.get("alpha", version=1)
    assert exc.value.code == "store.corrupt" and exc.value.key == "alpha@1"
    assert "fail verification" in str(exc.value) and store.url in str(exc.value)
    with pytest.raises(Corrupt):
        store.rollback("alpha", 1)  # never points the name at damaged bytes
    assert store.get("alpha").data == bundle(2)
    raw = target.raw.read_version("alpha", 2)
    assert raw is not None
    target.raw.write_version("alpha", 2, raw[:-5])  # truncated
    with pytest.raises(Corrupt):
        store.get("alpha")
    target.raw.write_version("alpha", 2, b"no record line")
    with pytest.raises(Corrupt, match="unreadable version object"):
        store.get("alpha")


def test_head_pointing_to_a_missing_version_is_corrupt(store: Store, target: Target) -> None:
    store.put("alpha", bundle(1))
    target.raw.delete_version("alpha", 1)
    with pytest.raises(Corrupt, match="version object 1 is missing"):
        store.get("alpha")


def test_damaged_head_record(
    store: Store, target: Target, caplog: pytest.LogCaptureFixture
) -> None:
    store.put("alpha", bundle(1))
    store.put("beta", bundle(2))
    target.raw.write_head("beta", b'{"schema": "nonsense"')
    with pytest.raises(Corrupt, match="unreadable head record"):
        store.get("beta")
    with pytest.raises(Corrupt):
        store.put("beta", bundle(3))
    with caplog.at_level(logging.ERROR, logger="pemn.store"):
        assert [i.name for i in store.list()] == ["alpha"]  # the others stay listed
    assert "beta" in caplog.text
    # A record stored under the wrong name is damage too.
    record = b'{"schema":"pemn.store.head/2","name":"alpha","rev":1,"top":0,"latest":null,"versions":[],"summary":null}'
    target.raw.write_head("gamma", record)
    with pytest.raises(Corrupt, match="does not fit name 'gamma'"):
        store.info("gamma")
    store.delete("beta")  # still removable
    with pytest.raises(NotFound):
        store.get("beta")
    assert store.put("beta", bundle(4)).created


def test_a_store_v1_record_asks_for_migration(store: Store, target: Target) -> None:
    store.put("alpha", bundle(1))
    target.raw.write_head("old", b'{"name":"old","schema":"pemn.store.head/1","versions":[]}')
    for call in (store.list, lambda: store.get("old"), lambda: store.put("old", bundle(2))):
        with pytest.raises(NeedsMigration, match="python -m pemn store migrate") as exc:
            call()
        assert exc.value.code == "store.needs_migration" and store.url in str(exc.value)


SERVERS = [
    pytest.param("redis", marks=pytest.mark.redis, id="redis"),
    pytest.param("s3", marks=pytest.mark.s3, id="s3"),
]


@pytest.mark.parametrize("target", SERVERS, indirect=True)
def test_stores_with_different_prefixes_are_isolated(target: Target) -> None:
    other_url = target.url.replace("t-", "u-", 1)
    assert other_url != target.url
    with (
        open_store(target.url, **store_options(target)) as a,
        open_store(other_url, **store_options(target)) as b,
    ):
        a.put("alpha", bundle(1))
        assert b.list() == []
        with pytest.raises(NotFound):
            b.get("alpha")
        b.put("alpha", bundle(2))
        assert a.get("alpha").data == bundle(1)


def test_store_url_in_errors_has_no_credentials(target: Target) -> None:
    if target.kind == "file":
        url = target.url
    elif target.kind == "redis":
        url = target.url.replace("redis://", "redis://someone:s3cret@")
    else:
        url = target.url + "&aws_secret_access_key=s3cret"
    opts = store_options(target)
    opts.pop("aws_secret_access_key", None)
    with open_store(url, **opts) as s:
        with pytest.raises(StoreError) as exc:
            s.get("ghost")
        assert "s3cret" not in str(exc.value) and "s3cret" not in s.url


def test_closed_store_refuses_calls(make_store: Callable[..., Store]) -> None:
    store = make_store()
    store.close()
    store.close()  # idempotent
    with pytest.raises(RuntimeError, match="closed"):
        store.list()
