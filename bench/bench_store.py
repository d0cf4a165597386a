"""Bundle store latency, this code against a baseline revision in the same run.

Two worker processes run the same measurements, one importing ``pemn`` from this tree
and one from ``git archive <baseline>`` (default: 982c461, the store v1 before issue
12); the parent interleaves them in small chunks so both see the same machine load.

1. put / get of a 100 KB bundle on the directory, Redis and S3 (moto) stores: ``put``
   (validated: ``inspect_bundle``), ``put w/o validation`` (a no-op validator: the
   store's own cost), ``get`` (head + bytes + sha256). Median / p90 ms.
2. contention: 16 tasks in another process upload new versions of 16 other names back
   to back while one client alternates an upload and a delete of its own name; p50 /
   p99 ms of that client's deletes and uploads (directory and Redis; a cheap
   validator, so that the store, not bundle validation, is what is measured).

Run: python -m bench.bench_store [--repeats 40] [--seconds 8] [--baseline 982c461]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import subprocess
import sys
import tarfile
import tempfile
import time
import uuid
from io import BytesIO
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
TARGET_BYTES = 100_000


def _bundles(n: int, big: bool) -> list[bytes]:
    """Test bundles: read from $PEMN_BENCH_BUNDLES (written by the parent, so that a
    worker running an older tree, which has no ``pemn.testing``, gets the same bytes),
    else made here."""
    kind = "big" if big else "small"
    saved = os.environ.get("PEMN_BENCH_BUNDLES")
    if saved:
        return [(Path(saved) / f"{kind}-{i}.pemn").read_bytes() for i in range(n)]
    from pemn.testing import make_bundle

    config = None
    if big:  # masks are 1 bit per weight
        config = {
            "in_channels": 1,
            "image_size": 28,
            "hidden": [TARGET_BYTES * 8 // (28 * 28 + 10)],
        }
    return [make_bundle(config=config, mask_seed=i) for i in range(n)]


def _cheap(data: bytes) -> dict[str, Any]:
    return {"arch": "mlp", "config": {}, "fingerprint": "x", "bytes": len(data)}


# ---------------------------------------------------------------- worker side
def _latency(cmd: dict[str, Any], data: list[bytes]) -> dict[str, list[float]]:
    from pemn.store import open_store

    out: dict[str, list[float]] = {"put": [], "plain": [], "get": []}
    full = open_store(cmd["url"].format(uuid.uuid4().hex[:8]), **cmd["options"])
    plain = open_store(cmd["url"].format(uuid.uuid4().hex[:8]), **cmd["options"], validator=_cheap)
    try:
        for i in range(cmd["n"]):
            d = data[(cmd["start"] + i) % len(data)]
            for key, s in (("put", full), ("plain", plain)):
                t = time.perf_counter()
                s.put("bench", d)
                out[key].append((time.perf_counter() - t) * 1000)
            t = time.perf_counter()
            full.get("bench")
            out["get"].append((time.perf_counter() - t) * 1000)
    finally:
        full.close()
        plain.close()
    return out


async def _upload_loop(
    url: str, options: dict[str, Any], seconds: float, data: list[bytes]
) -> None:
    """16 tasks uploading new versions of 16 names back to back (the load)."""
    from pemn.store import open_async_store

    stop = time.monotonic() + seconds
    async with open_async_store(url, **options, validator=_cheap) as s:

        async def uploader(i: int) -> None:
            n = 0
            while time.monotonic() < stop:
                n += 1
                await s.put(f"other-{i}", data[(i + n) % len(data)])

        await asyncio.gather(*(uploader(i) for i in range(16)))


async def _contention(cmd: dict[str, Any], data: list[bytes]) -> dict[str, list[float]]:
    """One task alternating upload and delete of its own name, while another process
    runs the 16 uploaders (so they do not share this client's loop and threads)."""
    from pemn.store import open_async_store

    url = cmd["url"].format(uuid.uuid4().hex[:8])
    load = subprocess.Popen(
        [
            sys.executable,
            __file__,
            "--uploaders",
            url,
            str(cmd["seconds"] + 1),
            json.dumps(cmd["options"]),
        ]
    )
    out: dict[str, list[float]] = {"delete": [], "upload": []}
    try:
        await asyncio.sleep(1.0)  # let the load start
        stop = time.monotonic() + cmd["seconds"]
        async with open_async_store(url, **cmd["options"], validator=_cheap) as s:
            n = 0
            while time.monotonic() < stop:
                n += 1
                t = time.perf_counter()
                await s.put("mine", data[n % len(data)])
                t1 = time.perf_counter()
                await s.delete("mine")
                out["upload"].append((t1 - t) * 1000)
                out["delete"].append((time.perf_counter() - t1) * 1000)
    finally:
        load.wait(120)
    return out


def _worker() -> None:
    big, small = _bundles(8, True), _bundles(24, False)
    for line in sys.stdin:
        cmd = json.loads(line)
        if cmd["op"] == "latency":
            result = _latency(cmd, big)
        else:
            result = asyncio.run(_contention(cmd, small))
        print(json.dumps(result), flush=True)


# ---------------------------------------------------------------- parent side
def _save_bundles(directory: Path) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    for big, n in ((True, 8), (False, 24)):
        for i, data in enumerate(_bundles(n, big)):
            (directory / f"{'big' if big else 'small'}-{i}.pemn").write_bytes(data)
    return directory


class Worker:
    def __init__(self, src: Path, bundles: Path) -> None:
        env = {
            **os.environ,
            "PYTHONPATH": f"{src}{os.pathsep}{ROOT}",
            "PEMN_BENCH_BUNDLES": str(bundles),
        }
        self.p = subprocess.Popen(
            [sys.executable, __file__, "--worker"], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
            env=env, text=True, cwd=tempfile.gettempdir(),
        )  # fmt: skip

    def run(self, **cmd: Any) -> dict[str, list[float]]:
        assert self.p.stdin and self.p.stdout
        self.p.stdin.write(json.dumps(cmd) + "\n")
        self.p.stdin.flush()
        return json.loads(self.p.stdout.readline())  # type: ignore[no-any-return]

    def close(self) -> None:
        assert self.p.stdin
        self.p.stdin.close()
        self.p.wait(60)


def _baseline_tree(rev: str, into: Path) -> Path:
    blob = subprocess.run(
        ["git", "-C", str(ROOT), "archive", rev, "pemn"], capture_output=True, check=True
    ).stdout
    with tarfile.open(fileobj=BytesIO(blob)) as tar:
        tar.extractall(into, filter="data")
    return into


def main() -> None:
    if "--worker" in sys.argv:
        _worker()
        return
    if "--uploaders" in sys.argv:
        url, seconds, options = sys.argv[2:5]
        asyncio.run(_upload_loop(url, json.loads(options), float(seconds), _bundles(24, False)))
        return
    from bench._report import percentile, table, write_section
    from pemn.testing.servers import MotoServer, RedisServer

    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repeats", type=int, default=40, help="timed put/get rounds per cell")
    parser.add_argument("--seconds", type=float, default=8, help="contention seconds per code")
    parser.add_argument("--baseline", default="982c461", help="git revision to compare with")
    args = parser.parse_args()

    def cell(ms: list[float], hi: float = 90) -> str:
        return f"{percentile(ms, 50):.2f} / {percentile(ms, hi):.2f}"

    codes = ("this", args.baseline)
    lat: dict[tuple[str, str], dict[str, list[float]]] = {}
    con: dict[tuple[str, str], dict[str, list[float]]] = {}
    with (
        tempfile.TemporaryDirectory(prefix="pemn-bench-") as tmp,
        RedisServer() as rs,
        MotoServer() as moto,
    ):
        bundles = _save_bundles(Path(tmp) / "bundles")
        workers = {
            "this": Worker(ROOT, bundles),
            args.baseline: Worker(_baseline_tree(args.baseline, Path(tmp) / "base"), bundles),
        }
        bucket = moto.bucket("pemn-bench")
        cases = [
            ("directory (file://, fsync)", Path(tmp).as_uri() + "/s-{}", {}),
            ("Redis (loopback)", rs.url + "?prefix=b-{}", {}),
            ("S3 (moto server, loopback)", f"s3://{bucket}/b-{{}}?endpoint_url={moto.endpoint_url}", dict(moto.credentials)),
        ]  # fmt: skip
        chunk = 5
        for label, url, options in cases:
            print(f"put/get: {label} ...", flush=True)
            for start in range(0, args.repeats, chunk):
                for code in codes:
                    got = workers[code].run(
                        op="latency", url=url, options=options, n=chunk, start=start
                    )
                    for k, v in got.items():
                        lat.setdefault((label, code), {}).setdefault(k, []).extend(v)
        for label, url, options in cases[:2]:
            print(f"contention: {label} ...", flush=True)
            for _ in range(2):
                for code in codes:
                    got = workers[code].run(
                        op="contention", url=url, options=options, seconds=args.seconds / 2
                    )
                    for k, v in got.items():
                        con.setdefault((label, code), {}).setdefault(k, []).extend(v)
        for w in workers.values():
            w.close()

    rows = [
        [label, code, cell(v["put"]), cell(v["plain"]), cell(v["get"])]
        for (label, code), v in lat.items()
    ]
    crow = [
        [label, code, len(v["delete"]), cell(v["delete"], 99), cell(v["upload"], 99)]
        for (label, code), v in con.items()
    ]
    load = ", ".join(f"{x:.1f}" for x in os.getloadavg())
    body = (
        f"Load average when done: {load} (a shared machine: medians move with it). `this` is "
        f"this tree; `{args.baseline}` the store before issue 12 (store-wide write lock, "
        "blob refs, global epoch, S3 lease), run by a second worker process from "
        "`git archive`, interleaved in chunks of 5 operations so both see the same load.\n\n"
        "**put / get of a 100 KB bundle** (an MLP bundle of ~109 KB, a new version each "
        f"put, retain=10). Milliseconds, median / p90 over {args.repeats} operations, sync API.\n\n"
        + table(
            ["backend", "code", "put (validated)", "put w/o validation", "get (verified)"], rows
        )
        + "\n\n**Contention**: 16 tasks in a second process upload new versions of 16 other "
        "names back to back while one client alternates an upload and a delete of its own "
        f"name (async API, 8 KB bundles, a cheap validator), {args.seconds:g} s per code in two "
        "interleaved halves. Milliseconds, p50 / p99 of that task's operations. Goal: delete "
        "p99 < 50 ms on the directory and Redis stores.\n\n"
        + table(["backend", "code", "deletes", "delete p50 / p99", "upload p50 / p99"], crow)
        + "\n\nA v2 put is: read the name's head, create the version object (conditional "
        "create), swap the head (compare-and-swap); two to three round trips, none of them "
        "shared with another name. A directory put makes two fsynced file writes (version, "
        "head revision) and their directory fsyncs."
    )
    write_section(
        "store",
        "Bundle stores: put/get latency, and deletes under upload contention",
        body,
        f"python -m bench.bench_store --repeats {args.repeats} --seconds {args.seconds:g} --baseline {args.baseline}",
    )


if __name__ == "__main__":
    main()
