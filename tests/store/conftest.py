"""Store fixtures: every contract test runs on the directory, Redis and S3 backends.

``target`` is one backend with a fresh isolated location (a temp directory, or a
uuid key prefix on the session's Redis / S3 server) and ``raw``: direct access to
that backend's storage, so tests can damage or inspect it behind the store's back.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from pemn.store import Store, open_store
from pemn.store.names import content_hex
from pemn.store.s3_backend import boto3_session
from tests.store.bundles import VALIDATOR

BACKENDS = [
    pytest.param("file", id="file"),
    pytest.param("redis", marks=pytest.mark.redis, id="redis"),
    pytest.param("s3", marks=pytest.mark.s3, id="s3"),
]


class Raw:
    """Direct access to a backend's keys (see docs/stores.md for the layouts)."""

    def blobs(self) -> set[str]:
        raise NotImplementedError

    def read_blob(self, cid: str) -> bytes | None:
        raise NotImplementedError

    def write_blob(self, cid: str, data: bytes) -> None:
        raise NotImplementedError

    def delete_blob(self, cid: str) -> None:
        raise NotImplementedError

    def write_head(self, name: str, record: bytes) -> None:
        raise NotImplementedError

    def refs(self, cid: str) -> set[str]:
        raise NotImplementedError

    def close(self) -> None:
        pass

    def flip_byte(self, cid: str, at: int = -1) -> None:
        data = bytearray(self.read_blob(cid) or b"")
        assert data, f"blob {cid} is not in the backend"
        data[at] ^= 0x01
        self.write_blob(cid, bytes(data))


class FileRaw(Raw):
    def __init__(self, root: Path) -> None:
        self.root = root

    def _blob(self, cid: str) -> Path:
        h = content_hex(cid)
        return self.root / "blobs" / "sha256" / h[:2] / h

    def blobs(self) -> set[str]:
        return {"sha256:" + p.name for p in (self.root / "blobs" / "sha256").glob("*/*")}

    def read_blob(self, cid: str) -> bytes | None:
        p = self._blob(cid)
        return p.read_bytes() if p.exists() else None

    def write_blob(self, cid: str, data: bytes) -> None:
        self._blob(cid).write_bytes(data)

    def delete_blob(self, cid: str) -> None:
        self._blob(cid).unlink()

    def write_head(self, name: str, record: bytes) -> None:
        (self.root / "heads" / f"{name}.json").write_bytes(record)

    def refs(self, cid: str) -> set[str]:
        d = self.root / "refs" / content_hex(cid)
        return {p.name for p in d.iterdir()} if d.is_dir() else set()


class RedisRaw(Raw):
    def __init__(self, url: str, prefix: str) -> None:
        import redis

        self.r = redis.Redis.from_url(url)
        self.p = prefix

    def blobs(self) -> set[str]:
        n = len(self.p) + len(":blob:")
        return {"sha256:" + k.decode()[n:] for k in self.r.scan_iter(f"{self.p}:blob:*")}

    def read_blob(self, cid: str) -> bytes | None:
        return self.r.get(f"{self.p}:blob:{content_hex(cid)}")  # type: ignore[return-value]

    def write_blob(self, cid: str, data: bytes) -> None:
        self.r.set(f"{self.p}:blob:{content_hex(cid)}", data)

    def delete_blob(self, cid: str) -> None:
        self.r.delete(f"{self.p}:blob:{content_hex(cid)}")

    def write_head(self, name: str, record: bytes) -> None:
        self.r.hset(f"{self.p}:heads", name, record)

    def refs(self, cid: str) -> set[str]:
        return {n.decode() for n in self.r.smembers(f"{self.p}:refs:{content_hex(cid)}")}  # type: ignore[union-attr]

    def close(self) -> None:
        self.r.close()


class S3Raw(Raw):
    def __init__(self, endpoint: str, bucket: str, prefix: str, creds: dict[str, str]) -> None:
        self.c = boto3_session(region_name="us-east-1", **creds).client("s3", endpoint_url=endpoint)
        self.b = bucket
        self.p = prefix

    def _keys(self, prefix: str) -> list[str]:
        out = []
        for page in self.c.get_paginator("list_objects_v2").paginate(Bucket=self.b, Prefix=prefix):
            out += [o["Key"] for o in page.get("Contents", [])]
        return out

    def _blob(self, cid: str) -> str:
        return f"{self.p}/blobs/sha256/{content_hex(cid)}"

    def blobs(self) -> set[str]:
        pre = f"{self.p}/blobs/sha256/"
        return {"sha256:" + k[len(pre) :] for k in self._keys(pre)}

    def read_blob(self, cid: str) -> bytes | None:
        try:
            body = self.c.get_object(Bucket=self.b, Key=self._blob(cid))["Body"]
        except self.c.exceptions.NoSuchKey:
            return None
        try:
            return bytes(body.read())
        finally:
            body.close()

    def write_blob(self, cid: str, data: bytes) -> None:
        self.c.put_object(Bucket=self.b, Key=self._blob(cid), Body=data)

    def delete_blob(self, cid: str) -> None:
        self.c.delete_object(Bucket=self.b, Key=self._blob(cid))

    def write_head(self, name: str, record: bytes) -> None:
        self.c.put_object(Bucket=self.b, Key=f"{self.p}/heads/{name}.json", Body=record)

    def refs(self, cid: str) -> set[str]:
        pre = f"{self.p}/refs/{content_hex(cid)}/"
        return {k[len(pre) :] for k in self._keys(pre)}

    def close(self) -> None:
        self.c.close()


@dataclass
class Target:
    kind: str
    url: str
    raw: Raw
    options: dict[str, Any] = field(default_factory=dict)  # credentials etc.


@pytest.fixture(params=BACKENDS)
def target(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Target]:
    prefix = f"t-{uuid.uuid4().hex[:12]}"
    kind = request.param
    t: Target
    if kind == "file":
        root = tmp_path / "store"
        t = Target(kind, root.as_uri(), FileRaw(root))
    elif kind == "redis":
        url = request.getfixturevalue("redis_server")
        t = Target(kind, f"{url}?prefix={prefix}", RedisRaw(url, prefix))
    else:
        s3 = request.getfixturevalue("s3_server")
        raw = S3Raw(s3.endpoint_url, s3.bucket, prefix, s3.credentials)
        t = Target(kind, s3.url(prefix), raw, dict(s3.credentials))
    try:
        yield t
    finally:
        t.raw.close()


def store_options(target: Target, **options: Any) -> dict[str, Any]:
    opts: dict[str, Any] = {**target.options}
    if VALIDATOR is not None:
        opts["validator"] = VALIDATOR
    opts.update(options)
    return opts


@pytest.fixture
def make_store(target: Target) -> Iterator[Callable[..., Store]]:
    """``make_store(**options)`` opens (and at teardown closes) a store on ``target``."""
    stores: list[Store] = []

    def make(**options: Any) -> Store:
        s = open_store(target.url, **store_options(target, **options))
        stores.append(s)
        return s

    yield make
    for s in stores:
        s.close()


@pytest.fixture
def store(make_store: Callable[..., Store]) -> Store:
    return make_store()
