"""The write locks of the directory and S3 backends: a writer that holds the lock
too long makes others fail with ``Unavailable`` (naming the store and the lock),
and an S3 lease left behind by a crashed writer expires after ``lock_ttl``."""

from __future__ import annotations

import fcntl
import json
import os
import time
from pathlib import Path

import pytest

from pemn.store import Unavailable, open_store
from pemn.store.s3_backend import boto3_session
from tests.conftest import S3Endpoint
from tests.store.bundles import VALIDATOR, bundle


def _opts(**kw: object) -> dict[str, object]:
    return {"validator": VALIDATOR, **kw} if VALIDATOR else dict(kw)


def test_directory_lock_held_elsewhere(tmp_path: Path) -> None:
    url = (tmp_path / "s").as_uri()
    with open_store(url, **_opts(lock_timeout=0.3)) as store:
        store.put("alpha", bundle(1))
        fd = os.open(tmp_path / "s" / "lock", os.O_RDWR)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)  # another writer, stuck
            start = time.monotonic()
            with pytest.raises(Unavailable, match=r"held the write lock for more than 0\.3s") as e:
                store.put("alpha", bundle(2))
            assert 0.25 < time.monotonic() - start < 3
            assert "after 1 attempt(s)" in str(e.value)
            assert store.url in str(e.value) and "'alpha'" in str(e.value)
            assert store.get("alpha").version == 1  # readers take no lock
        finally:
            os.close(fd)
        assert store.put("alpha", bundle(2)).version == 2


def _put_lock(s3: S3Endpoint, prefix: str, doc: dict[str, object]) -> None:
    client = boto3_session(region_name="us-east-1", **s3.credentials).client(
        "s3", endpoint_url=s3.endpoint_url
    )
    try:
        client.put_object(Bucket=s3.bucket, Key=f"{prefix}/lock", Body=json.dumps(doc).encode())
    finally:
        client.close()


@pytest.mark.s3
def test_s3_lease_of_a_crashed_writer_expires(s3_server: S3Endpoint) -> None:
    prefix = f"lock-{time.monotonic_ns()}"
    _put_lock(s3_server, prefix, {"owner": "dead", "host": "gone-host", "pid": 4242, "ttl": 2})
    url = s3_server.url(prefix)
    creds = s3_server.credentials
    with open_store(url, **_opts(lock_ttl=2, lock_timeout=0.5, **creds)) as store:
        with pytest.raises(Unavailable, match="held by gone-host pid 4242") as e:
            store.put("alpha", bundle(1))
        assert store.url in str(e.value)
    with open_store(url, **_opts(lock_ttl=2, lock_timeout=10, **creds)) as store:
        start = time.monotonic()
        assert store.put("alpha", bundle(1)).version == 1  # after the lease ran out
        assert time.monotonic() - start < 8
        assert store.put("alpha", bundle(2)).version == 2  # and the lock was released


@pytest.mark.s3
def test_s3_released_lock_is_taken_at_once(s3_server: S3Endpoint) -> None:
    prefix = f"lock-{time.monotonic_ns()}"
    _put_lock(s3_server, prefix, {"released": True, "owner": "someone"})
    with open_store(
        s3_server.url(prefix), **_opts(lock_timeout=1, **s3_server.credentials)
    ) as store:
        start = time.monotonic()
        store.put("alpha", bundle(1))
        assert time.monotonic() - start < 1
