"""The store contract, run identically on the directory, Redis and S3 backends."""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Callable

import pytest

from pemn.store import (
    Conflict,
    Corrupt,
    InvalidBundle,
    InvalidName,
    NotFound,
    Store,
    StoreError,
    TooLarge,
    open_store,
)
from tests.store.bundles import bundle, corrupt, summary_seed
from tests.store.conftest import Target, store_options


def sha(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def test_put_then_get_round_trips_verified_bytes(store: Store) -> None:
    data = bundle(1)
    r = store.put("alpha", data)
    assert (r.name, r.version, r.content_id, r.size, r.created) == (
        "alpha",
        1,
        sha(data),
        len(data),
        True,
    )
    got = store.get("alpha")
    assert got.data == data
    assert (got.name, got.version, got.content_id, got.size) == ("alpha", 1, sha(data), len(data))
    assert store.get_by_id(sha(data)) == data


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
    epoch = store.epoch()
    again = store.put("alpha", bundle(1))
    assert (again.version, again.content_id, again.created) == (1, first.content_id, False)
    assert store.epoch() == epoch
    assert [v.version for v in store.versions("alpha")] == [1]
    assert target.raw.blobs() == {first.content_id}


def test_reput_of_an_older_version_makes_a_new_version(store: Store) -> None:
    store.put("alpha", bundle(1))
    store.put("alpha", bundle(2))
    back = store.put("alpha", bundle(1))  # a roll-back is a new version with old bytes
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
    assert store.info("alpha") == alpha


def test_list_never_reads_blobs(store: Store, target: Target) -> None:
    r = store.put("alpha", bundle(3))
    target.raw.delete_blob(r.content_id)  # listing must not need it
    (info,) = store.list()
    assert summary_seed(info.summary) == 3


def test_missing_things_raise_not_found_naming_store_and_key(store: Store) -> None:
    for call in (
        lambda: store.get("ghost"),
        lambda: store.versions("ghost"),
        lambda: store.info("ghost"),
        lambda: store.delete("ghost"),
    ):
        with pytest.raises(NotFound) as exc:
            call()
        assert exc.value.code == "store.not_found"
        assert "ghost" in str(exc.value) and store.url in str(exc.value)
    store.put("alpha", bundle(1))
    with pytest.raises(NotFound, match="no version 7 \\(retained: 1\\)") as exc:
        store.get("alpha", version=7)
    assert exc.value.key == "alpha@7"
    with pytest.raises(NotFound):
        store.get_by_id(sha(b"never stored"))


def test_get_rejects_bad_versions_and_content_ids(store: Store) -> None:
    store.put("alpha", bundle(1))
    for bad in (0, -1, True, 1.0, "1"):
        with pytest.raises(ValueError):
            store.get("alpha", version=bad)  # type: ignore[arg-type]
    for bad_id in ("", "sha256:", "md5:" + "0" * 32, "sha256:" + "A" * 64, "sha256:" + "0" * 63):
        with pytest.raises(InvalidName):
            store.get_by_id(bad_id)


def test_delete_removes_name_and_its_unshared_blobs(store: Store, target: Target) -> None:
    a1 = store.put("alpha", bundle(1))
    a2 = store.put("alpha", bundle(2))
    shared = store.put("beta", bundle(2))  # same bytes as alpha v2
    assert shared.content_id == a2.content_id
    assert target.raw.refs(a2.content_id) == {"alpha", "beta"}
    epoch = store.epoch()
    store.delete("alpha")
    assert store.epoch() == epoch + 1
    with pytest.raises(NotFound):
        store.get("alpha")
    assert [i.name for i in store.list()] == ["beta"]
    assert target.raw.blobs() == {a2.content_id}  # alpha v1 gone, shared blob kept
    assert target.raw.refs(a2.content_id) == {"beta"}
    assert target.raw.refs(a1.content_id) == set()
    assert store.get("beta").data == bundle(2)
    with pytest.raises(NotFound):
        store.get_by_id(a1.content_id)
    store.delete("beta")
    assert target.raw.blobs() == set()
    # The name can be used again; its versions start over.
    assert store.put("alpha", bundle(9)).version == 1


def test_retention_keeps_the_newest_versions(
    make_store: Callable[..., Store], target: Target
) -> None:
    store = make_store(retain=3)
    store.put("other", bundle(0))  # bundle(0) is also alpha v1: its blob must survive
    for i in range(5):
        store.put("alpha", bundle(i))
    assert [v.version for v in store.versions("alpha")] == [3, 4, 5]
    with pytest.raises(NotFound, match="retained: 3, 4, 5"):
        store.get("alpha", version=2)
    assert store.get("alpha", version=3).data == bundle(2)
    assert target.raw.blobs() == {sha(bundle(i)) for i in (0, 2, 3, 4)}
    assert target.raw.refs(sha(bundle(0))) == {"other"}
    assert store.get("other").data == bundle(0)
    assert store.list()[0].versions == 3


def test_retain_one_keeps_only_the_latest(make_store: Callable[..., Store], target: Target) -> None:
    store = make_store(retain=1)
    for i in range(3):
        store.put("alpha", bundle(i))
    assert [v.version for v in store.versions("alpha")] == [3]
    assert target.raw.blobs() == {sha(bundle(2))}


def test_compare_and_set(store: Store) -> None:
    assert store.put("alpha", bundle(1), expected_version=0).version == 1
    epoch = store.epoch()
    with pytest.raises(Conflict) as exc:
        store.put("alpha", bundle(2), expected_version=0)
    assert (exc.value.expected, exc.value.current, exc.value.code) == (0, 1, "store.conflict")
    assert "expected version 0, current version is 1" in str(exc.value)
    assert "alpha" in str(exc.value) and store.url in str(exc.value)
    assert store.put("alpha", bundle(2), expected_version=1).version == 2
    with pytest.raises(Conflict):
        store.put("alpha", bundle(3), expected_version=1)
    with pytest.raises(Conflict):
        store.put("new-name", bundle(3), expected_version=4)
    assert [v.version for v in store.versions("alpha")] == [1, 2]
    assert store.epoch() == epoch + 1
    with pytest.raises(NotFound):
        store.get("new-name")
    # Re-putting the latest bytes with the matching expectation is idempotent.
    r = store.put("alpha", bundle(2), expected_version=2)
    assert (r.version, r.created) == (2, False)
    for bad in (-1, True, 1.5):
        with pytest.raises(ValueError):
            store.put("alpha", bundle(4), expected_version=bad)  # type: ignore[arg-type]


def test_epoch_counts_every_change_and_nothing_else(store: Store) -> None:
    e0 = store.epoch()
    assert e0 == 0
    r1 = store.put("alpha", bundle(1))
    assert r1.epoch == store.epoch() == 1
    assert store.put("alpha", bundle(1)).epoch == 1  # no change
    assert store.put("alpha", bundle(2)).epoch == 2
    assert store.put("beta", bundle(3)).epoch == 3
    for fail in (
        lambda: store.put("alpha", bundle(4), expected_version=1),
        lambda: store.put("alpha", corrupt(bundle(4))),
        lambda: store.delete("ghost"),
    ):
        with pytest.raises(StoreError):
            fail()
    assert store.epoch() == 3
    store.delete("beta")
    assert store.epoch() == 4
    store.get("alpha")
    store.list()
    assert store.epoch() == 4


def test_invalid_bundle_is_refused_before_anything_is_written(store: Store, target: Target) -> None:
    store.put("alpha", bundle(1))
    before = (store.epoch(), target.raw.blobs(), store.list())
    for name in ("alpha", "fresh"):
        with pytest.raises(InvalidBundle) as exc:
            store.put(name, corrupt(bundle(2)))
        assert exc.value.code == "store.invalid_bundle"
        assert exc.value.bundle_code is not None and exc.value.field is not None
        assert name in str(exc.value) and store.url in str(exc.value)
        assert isinstance(exc.value, ValueError)
    with pytest.raises(InvalidBundle):
        store.put("fresh", b"")
    assert (store.epoch(), target.raw.blobs(), store.list()) == before


def test_oversized_bundle_is_refused_before_validation_or_writing(
    make_store: Callable[..., Store], target: Target
) -> None:
    calls: list[int] = []
    from tests.store.bundles import VALIDATOR

    def spy(data: bytes) -> dict[str, object]:
        calls.append(len(data))
        return dict(VALIDATOR(data)) if VALIDATOR else {}

    store = make_store(max_bundle_bytes=1000, validator=spy)
    store.put("alpha", bundle(1))
    assert len(calls) == 1
    big = bundle(2, size=1001)
    assert len(big) > 1000
    with pytest.raises(TooLarge) as exc:
        store.put("alpha", big)
    assert (exc.value.size, exc.value.limit, exc.value.code) == (len(big), 1000, "store.too_large")
    assert isinstance(exc.value, InvalidBundle)
    assert "max_bundle_bytes" in str(exc.value) and "alpha" in str(exc.value)
    assert len(calls) == 1  # refused before validation
    assert store.epoch() == 1
    assert target.raw.blobs() == {sha(bundle(1))}
    assert store.get("alpha").data == bundle(1)


def test_put_accepts_only_bytes(store: Store) -> None:
    with pytest.raises(TypeError):
        store.put("alpha", "text")  # type: ignore[arg-type]
    assert store.put("alpha", bytearray(bundle(1))).content_id == sha(bundle(1))
    assert store.put("alpha", memoryview(bundle(2))).version == 2


def test_flipped_byte_in_a_blob_is_detected(store: Store, target: Target) -> None:
    r = store.put("alpha", bundle(1))
    store.put("beta", bundle(1))
    target.raw.flip_byte(r.content_id)
    for call in (lambda: store.get("alpha"), lambda: store.get("beta", version=1)):
        with pytest.raises(Corrupt) as exc:
            call()
        assert exc.value.code == "store.corrupt"
        assert "fail verification" in str(exc.value) and store.url in str(exc.value)
    with pytest.raises(Corrupt, match="alpha"):
        store.get("alpha")
    with pytest.raises(Corrupt, match=r.content_id):
        store.get_by_id(r.content_id)
    # A truncated blob is caught too.
    target.raw.write_blob(r.content_id, bundle(1)[:-5])
    with pytest.raises(Corrupt):
        store.get("alpha")


def test_head_pointing_to_a_missing_blob_is_corrupt(store: Store, target: Target) -> None:
    r = store.put("alpha", bundle(1))
    target.raw.delete_blob(r.content_id)
    with pytest.raises(Corrupt, match="missing blob"):
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
    target.raw.write_head("gamma", b'{"schema":"pemn.store.head/1","name":"alpha"}')
    with pytest.raises(Corrupt):
        store.info("gamma")
    store.delete("beta")  # still removable
    with pytest.raises(NotFound):
        store.get("beta")


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
        assert b.epoch() == 0
        b.put("alpha", bundle(2))
        assert a.get("alpha").data == bundle(1)


def test_store_url_in_errors_has_no_credentials(target: Target) -> None:
    if target.kind == "file":
        url = target.url
    elif target.kind == "redis":
        url = target.url.replace("redis://", "redis://someone:s3cret@")
    else:
        url = target.url + "&aws_secret_access_key=s3cret"
    with open_store(url, **store_options(target)) as s:
        with pytest.raises(StoreError) as exc:
            s.get("ghost")
        assert "s3cret" not in str(exc.value) and "s3cret" not in s.url


def test_closed_store_refuses_calls(make_store: Callable[..., Store]) -> None:
    store = make_store()
    store.close()
    store.close()  # idempotent
    with pytest.raises(RuntimeError, match="closed"):
        store.list()
