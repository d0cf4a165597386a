"""Store fixtures: every contract test runs on the directory, Redis and S3 backends.

``target`` is one backend with a fresh isolated location (a temp directory, or a
uuid key prefix on the session's Redis / S3 server) and ``raw``: direct access to
that backend's keys (docs/stores.md has the layouts), so tests can damage or inspect
them behind the store's back.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from pemn.store import Store, open_store
from tests.store.bundles import VALIDATOR

BACKENDS = [
    pytest.param("file", id="file"),
    pytest.param("redis", marks=pytest.mark.redis, id="redis"),
    pytest.param("s3", marks=pytest.mark.s3, id="s3"),
]


class Raw:
    """Direct access to a backend's version objects and heads."""

    def version_keys(self) -> set[tuple[str, int]]:
        """(name, version) of every version object."""
        raise NotImplementedError

    def read_version(self, name: str, version: int) -> bytes | None:
        raise NotImplementedError

    def write_version(self, name: str, version: int, data: bytes) -> None:
        raise NotImplementedError

    def delete_version(self, name: str, version: int) -> None:
        raise NotImplementedError

    def write_head(self, name: str, record: bytes) -> None:
        """Overwrite the head of ``name`` with ``record`` (damage it)."""
        raise NotImplementedError

    def close(self) -> None:
        pass

    def flip_byte(self, name: str, version: int, at: int = -1) -> None:
        data = bytearray(self.read_version(name, version) or b"")
        assert data, f"{name} v{version} is not in the backend"
        data[at] ^= 0x01
        self.write_version(name, version, bytes(data))


class FileRaw(Raw):
    def __init__(self, root: Path) -> None:
        self.root = root

    def _v(self, name: str, version: int) -> Path:
        return self.root / "versions" / name / f"{version:012d}"

    def version_keys(self) -> set[tuple[str, int]]:
        return {(p.parent.name, int(p.name)) for p in (self.root / "versions").glob("*/*")}

    def read_version(self, name: str, version: int) -> bytes | None:
        p = self._v(name, version)
        return p.read_bytes() if p.exists() else None

    def write_version(self, name: str, version: int, data: bytes) -> None:
        self._v(name, version).write_bytes(data)

    def delete_version(self, name: str, version: int) -> None:
        self._v(name, version).unlink()

    def write_head(self, name: str, record: bytes) -> None:
        d = self.root / "heads" / name
        d.mkdir(parents=True, exist_ok=True)
        revs = sorted(int(p.name) for p in d.iterdir())
        (d / f"{(revs[-1] if revs else 0) + 1:012d}").write_bytes(record)


class RedisRaw(Raw):
    def __init__(self, url: str, prefix: str) -> None:
        import redis

        self.r = redis.Redis.from_url(url)
        self.p = prefix

    def version_keys(self) -> set[tuple[str, int]]:
        out = set()
        for k in self.r.scan_iter(f"{self.p}:v:*"):
            name, _, n = k.decode()[len(self.p) + 3 :].rpartition(":")
            out.add((name, int(n)))
        return out

    def read_version(self, name: str, version: int) -> bytes | None:
        return self.r.get(f"{self.p}:v:{name}:{version}")  # type: ignore[return-value]

    def write_version(self, name: str, version: int, data: bytes) -> None:
        self.r.set(f"{self.p}:v:{name}:{version}", data)

    def delete_version(self, name: str, version: int) -> None:
        self.r.delete(f"{self.p}:v:{name}:{version}")

    def write_head(self, name: str, record: bytes) -> None:
        self.r.hset(f"{self.p}:heads", name, record)

    def close(self) -> None:
        self.r.close()


class S3Raw(Raw):
    def __init__(self, endpoint: str, bucket: str, prefix: str, creds: dict[str, str]) -> None:
        import boto3

        self.c = boto3.client("s3", region_name="us-east-1", endpoint_url=endpoint, **creds)
        self.b = bucket
        self.p = prefix

    def _v(self, name: str, version: int) -> str:
        return f"{self.p}/versions/{name}/{version:012d}"

    def version_keys(self) -> set[tuple[str, int]]:
        out = set()
        pages = self.c.get_paginator("list_objects_v2").paginate(
            Bucket=self.b, Prefix=f"{self.p}/versions/"
        )
        for page in pages:
            for o in page.get("Contents", []):
                _, name, n = o["Key"].rsplit("/", 2)
                out.add((name, int(n)))
        return out

    def read_version(self, name: str, version: int) -> bytes | None:
        try:
            body = self.c.get_object(Bucket=self.b, Key=self._v(name, version))["Body"]
        except self.c.exceptions.NoSuchKey:
            return None
        try:
            return bytes(body.read())
        finally:
            body.close()

    def write_version(self, name: str, version: int, data: bytes) -> None:
        self.c.put_object(Bucket=self.b, Key=self._v(name, version), Body=data)

    def delete_version(self, name: str, version: int) -> None:
        self.c.delete_object(Bucket=self.b, Key=self._v(name, version))

    def write_head(self, name: str, record: bytes) -> None:
        self.c.put_object(Bucket=self.b, Key=f"{self.p}/heads/{name}.json", Body=record)

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
