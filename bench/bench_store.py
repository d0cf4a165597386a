"""Bundle store latency: put and get of a 100 KB bundle on each backend, same run.

Backends: local directory (fsync on), Redis and S3 (moto's server), both started
on loopback by this script with the same helpers the tests use (tests/servers.py).
Columns, per backend (median and p90 over the repeats, milliseconds):

  put        ``store.put`` of a new version: size cap, bundle validation
             (``inspect_bundle``), sha256, the backend's transaction, retention
  put w/o validation   the same with a no-op validator: what validation costs
  get        ``store.get`` of the latest version: head + blob + sha256 check
  raw write / raw read  one plain write / read of the same bytes with the backend's
             own client (file write+fsync+rename, Redis SET/GET, S3 PUT/GET): the floor

Run: python bench/bench_store.py [--repeats 40]
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
import uuid
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench._report import percentile, table, write_section  # noqa: E402
from pemn.bundle import inspect_bundle  # noqa: E402
from pemn.store import open_store  # noqa: E402
from pemn.store.s3_backend import boto3_session  # noqa: E402
from tests.pemn.bundles import make_bundle  # noqa: E402
from tests.servers import MotoServer, RedisServer  # noqa: E402

TARGET_BYTES = 100_000


def bundles(n: int) -> list[bytes]:
    """``n`` distinct valid MLP bundles of about 100 KB (masks: 1 bit per weight)."""
    hidden = TARGET_BYTES * 8 // (28 * 28 + 10)
    config = {"in_channels": 1, "image_size": 28, "hidden": [hidden]}
    return [make_bundle(config=config, mask_seed=i) for i in range(n)]


def timed(fn: Callable[[], object]) -> float:
    t = time.perf_counter()
    fn()
    return (time.perf_counter() - t) * 1000


def stats(ms: list[float]) -> str:
    return f"{percentile(ms, 50):.2f} / {percentile(ms, 90):.2f}"


def no_validation(data: bytes) -> dict[str, Any]:
    return {}


def measure(
    url: str, data: list[bytes], options: dict[str, Any], repeats: int
) -> tuple[str, str, str]:
    """put (validated), put (no validation), get: 'median / p90' ms each.

    The two kinds of put go to two stores (fresh prefixes / directories) and are
    interleaved, one of each per round, so that both see the same machine load."""
    validated = open_store(url.format(uuid.uuid4().hex[:8]), **options)
    plain = open_store(url.format(uuid.uuid4().hex[:8]), **options, validator=no_validation)
    times: dict[str, list[float]] = {"put": [], "plain": [], "get": []}
    try:
        for d in data[:3]:  # warm up: connections, first versions
            validated.put("warmup", d)
            plain.put("warmup", d)
        for d in data[3 : 3 + repeats]:
            times["put"].append(timed(partial(validated.put, "bench", d)))
            times["plain"].append(timed(partial(plain.put, "bench", d)))
            times["get"].append(timed(partial(validated.get, "bench")))
    finally:
        validated.close()
        plain.close()
    return stats(times["put"]), stats(times["plain"]), stats(times["get"])


def raw_file(root: Path, data: bytes, repeats: int) -> tuple[list[float], list[float]]:
    root.mkdir(parents=True, exist_ok=True)
    path = root / "blob"

    def write() -> None:
        tmp = root / f"tmp.{uuid.uuid4().hex}"
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
        fd = os.open(root, os.O_RDONLY | os.O_DIRECTORY)
        os.fsync(fd)
        os.close(fd)

    writes = [timed(write) for _ in range(repeats)]
    reads = [timed(path.read_bytes) for _ in range(repeats)]
    return writes, reads


def raw_redis(url: str, data: bytes, repeats: int) -> tuple[list[float], list[float]]:
    import redis

    r = redis.Redis.from_url(url)
    try:
        key = f"bench-raw:{uuid.uuid4().hex}"
        r.set(key, data)
        writes = [timed(lambda: r.set(key, data)) for _ in range(repeats)]
        reads = [timed(lambda: r.get(key)) for _ in range(repeats)]
        r.delete(key)
    finally:
        r.close()
    return writes, reads


def raw_s3(endpoint: str, bucket: str, creds: dict[str, str], data: bytes, repeats: int) -> Any:
    c = boto3_session(region_name="us-east-1", **creds).client("s3", endpoint_url=endpoint)
    key = f"bench-raw/{uuid.uuid4().hex}"

    def get() -> None:
        body = c.get_object(Bucket=bucket, Key=key)["Body"]
        body.read()
        body.close()

    try:
        c.put_object(Bucket=bucket, Key=key, Body=data)
        writes = [
            timed(lambda: c.put_object(Bucket=bucket, Key=key, Body=data)) for _ in range(repeats)
        ]
        reads = [timed(get) for _ in range(repeats)]
    finally:
        c.close()
    return writes, reads


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repeats", type=int, default=40, help="timed operations per cell")
    args = parser.parse_args()
    n = args.repeats

    print(f"making {n + 3} bundles of ~{TARGET_BYTES // 1000} KB ...", flush=True)
    data = bundles(n + 3)
    size = len(data[0])
    validate = [timed(partial(inspect_bundle, d)) for d in data[:n]]

    rows = []
    with (
        tempfile.TemporaryDirectory(prefix="pemn-bench-") as tmp,
        RedisServer() as rs,
        MotoServer(threaded=True) as moto,  # one client here: threads are safe
    ):
        bucket = moto.bucket("pemn-bench")
        creds = dict(moto.credentials)
        s3_url = f"s3://{bucket}/b-{{}}?endpoint_url={moto.endpoint_url}"
        cases = [
            ("directory (file://, fsync)", Path(tmp).as_uri() + "/s-{}", {},
             lambda: raw_file(Path(tmp) / "raw", data[0], n)),
            ("Redis (loopback)", rs.url + "?prefix=b-{}", {},
             lambda: raw_redis(rs.url, data[0], n)),
            ("S3 (moto server, loopback)", s3_url, creds,
             lambda: raw_s3(moto.endpoint_url, bucket, creds, data[0], n)),
        ]  # fmt: skip
        for label, url, options, raw in cases:
            print(f"measuring {label} ...", flush=True)
            put, put_raw, get = measure(url, data, options, n)
            writes, reads = raw()
            rows.append([label, put, put_raw, get, stats(writes), stats(reads)])

    header = [
        "backend",
        "put (validated)",
        "put w/o validation",
        "get (verified)",
        "raw write",
        "raw read",
    ]
    load = ", ".join(f"{x:.1f}" for x in os.getloadavg())
    body = (
        f"Load average when done: {load} (a shared machine: medians move with it).\n\n"
        f"Bundle: an MLP bundle of {size:,} bytes (a new version each put; retain=10, so "
        f"old versions are dropped as in steady state). Milliseconds, median / p90 over "
        f"{n} operations each, sync API. Validation alone (`inspect_bundle`): "
        f"{stats(validate)} ms.\n\n"
        + table(header, rows)
        + "\n\n`put w/o validation` uses a no-op validator: the store's own cost "
        "(sha256, transaction, retention); the two puts are interleaved so both see the "
        "same load. `raw write/read` is one plain write/read of the same bytes with the "
        "backend's client: the floor. A directory put makes seven fsyncs (ref marker, "
        "blob, head, epoch: file and directory); a Redis put is one WATCH/MULTI/EXEC; an "
        "S3 put checks `lock.waiting` and takes the lease lock, reads head and epoch, "
        "writes ref and blob, head, epoch, deletes the dropped version's ref and blob and "
        "releases the lock: nine round trips. moto is a Python server on loopback; "
        "against real S3 each round trip costs tens of milliseconds."
    )
    write_section(
        "store",
        "Bundle stores: put/get latency of a 100 KB bundle",
        body,
        f"python bench/bench_store.py --repeats {n}",
    )


if __name__ == "__main__":
    main()
