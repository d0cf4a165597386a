"""``python -m pemn store migrate URL`` on stores written by the store v1 code
(tests/store/fixtures/v1: a directory tree, and every Redis / S3 key v1 wrote)."""

from __future__ import annotations

import base64
import json
import shutil
import uuid
from pathlib import Path
from urllib.parse import urlencode

import pytest

from pemn.cli import main
from pemn.store import NeedsMigration, NotFound, content_id, open_store
from pemn.testing import S3Endpoint
from tests.store.bundles import bundle

FIXTURES = Path(__file__).parent / "fixtures" / "v1"


def _expected() -> dict[str, list[tuple[int, str]]]:
    """(version, content id) of every retained version, from the v1 heads."""
    out = {}
    for p in sorted((FIXTURES / "file-store" / "heads").glob("*.json")):
        doc = json.loads(p.read_text())
        out[p.stem] = [(v["version"], v["content_id"]) for v in doc["versions"]]
    return out


def _check_migrated(url: str, capsys: pytest.CaptureFixture[str]) -> None:
    with open_store(url) as store, pytest.raises(NeedsMigration):
        store.list()
    assert main(["store", "migrate", url]) == 0
    out = capsys.readouterr().out
    assert "3 name(s) migrated" in out and "migrated alpha: versions 2, 3" in out
    expected = _expected()
    assert set(expected) == {"alpha", "beta", "gamma"}  # "gone" was deleted under v1
    with open_store(url) as store:
        assert [i.name for i in store.list()] == sorted(expected)
        for name, versions in expected.items():
            assert [(v.version, v.content_id) for v in store.versions(name)] == versions
            for version, cid in versions:
                got = store.get(name, version)  # sha256-verified v2 version objects
                assert content_id(got.data) == cid
            info = store.info(name)
            assert (info.version, info.content_id) == versions[-1]
            assert info.summary["content_id"] == versions[-1][1]
        with pytest.raises(NotFound):
            store.get("gone")
        # Migrated names behave as v2 names: numbering goes on, rollback works.
        assert store.put("alpha", bundle(1)).version == 4
        assert store.rollback("alpha", 2).version == 2
    assert main(["store", "migrate", url]) == 0
    assert "0 name(s) migrated" in capsys.readouterr().out  # re-running is safe


def test_migrate_a_directory_store(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    root = tmp_path / "store"
    shutil.copytree(FIXTURES / "file-store", root)
    _check_migrated(root.as_uri(), capsys)
    assert sorted(p.name for p in root.iterdir()) == ["heads", "tmp", "versions"]
    assert not list((root / "heads").glob("*.json"))


@pytest.mark.redis
def test_migrate_a_redis_store(redis_server: str, capsys: pytest.CaptureFixture[str]) -> None:
    import redis

    prefix = f"m-{uuid.uuid4().hex[:10]}"
    r = redis.Redis.from_url(redis_server)
    try:
        for key, item in json.loads((FIXTURES / "redis-v1.json").read_text()).items():
            key = prefix + key.removeprefix("v1")
            if item["type"] == "string":
                r.set(key, base64.b64decode(item["value"]))
            elif item["type"] == "hash":
                r.hset(key, mapping={f: base64.b64decode(v) for f, v in item["value"].items()})
            else:
                r.sadd(key, *item["value"])
        _check_migrated(f"{redis_server}?prefix={prefix}", capsys)
        left = sorted(k.decode().split(":")[1] for k in r.scan_iter(f"{prefix}:*"))
        assert set(left) == {"heads", "v", "changes"}  # no v1 blobs, refs or epoch
    finally:
        for k in r.scan_iter(f"{prefix}:*"):
            r.delete(k)
        r.close()


@pytest.mark.s3
def test_migrate_an_s3_store(s3_server: S3Endpoint, capsys: pytest.CaptureFixture[str]) -> None:
    import boto3

    prefix = f"m-{uuid.uuid4().hex[:10]}"
    c = boto3.client(
        "s3", region_name="us-east-1", endpoint_url=s3_server.endpoint_url, **s3_server.credentials
    )
    try:
        for key, body in json.loads((FIXTURES / "s3-v1.json").read_text()).items():
            c.put_object(
                Bucket=s3_server.bucket,
                Key=prefix + key.removeprefix("v1"),
                Body=base64.b64decode(body),
            )
        _check_migrated(s3_server.url(prefix) + "&" + urlencode(s3_server.credentials), capsys)
        keys = [
            o["Key"]
            for o in c.list_objects_v2(Bucket=s3_server.bucket, Prefix=prefix + "/")["Contents"]
        ]
        assert {k.split("/")[1] for k in keys} == {"heads", "versions"}
    finally:
        c.close()
