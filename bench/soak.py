"""Soak: N clients mixing predictions, uploads, replacements and deletes against a real
server, with the store (Redis) killed and restarted mid-run, or the server process
itself killed (SIGKILL) and restarted (directory store). Afterwards every client's last
acknowledged write is checked against the store, then the server is restarted and
it is checked again.

Each client owns one name and runs requests back to back: 50 % predictions on one of
four resident tasks (uploaded and loaded before the clock starts, never written),
20 % uploads, 15 % replacements with ``If-Match`` (the ETag it last saw), 15 % deletes.
A write answered 201/200/204 (or 404 for a delete) is acknowledged; one answered 503
or cut off is "not known" (it may have committed before the answer, never after). A
lost acknowledged write: the name's final state is neither the last acknowledged one
nor that of a not-known write after it.

    python -m bench.soak --backend redis --clients 32 --seconds 60 --outage 10
    python -m bench.soak --backend file --clients 32 --seconds 60 --kill-server

prints a summary and, with ``--json``, one JSON object (tests/store/test_soak.py).
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import random
import signal
import sys
import tempfile
import time
from collections import Counter
from typing import Any

import httpx

from pemn.testing import ServerProcess, make_bundle
from pemn.testing.servers import RedisServer

RESIDENT = [f"resident-{i}" for i in range(4)]
INPUTS = {"inputs": [[[[0.5] * 28] * 28]]}
_GONE = "absent"


class Run:
    def __init__(self, args: argparse.Namespace, url: str) -> None:
        self.args, self.url = args, url
        self.bundles = [make_bundle(mask_seed=10_000 + i) for i in range(48)]
        self.cid = {b: "sha256:" + hashlib.sha256(b).hexdigest() for b in self.bundles}
        self.status: Counter[str] = Counter()
        self.outage: tuple[float, float] | None = None  # when the fault was on
        self.during = Counter[str]()  # resident predictions while it was
        self.acked: dict[str, str] = {}  # name -> last acknowledged state
        self.unknown: dict[str, list[str]] = {}  # name -> states of not-known writes since
        self.stray_503 = 0  # 503 outside the fault window (+ the write deadline)

    def _in_fault(self, t0: float, t1: float, grace: float = 0.0) -> bool:
        """Whether a request that ran from ``t0`` to ``t1`` overlapped the fault."""
        return self.outage is not None and t1 >= self.outage[0] and t0 <= self.outage[1] + grace

    async def client(self, i: int, until: float) -> None:
        name, etag = f"soak-{i}", None
        rng = random.Random(i)
        async with httpx.AsyncClient(timeout=10) as c:
            while time.monotonic() < until:
                op, t0 = rng.random(), time.monotonic()
                data = rng.choice(self.bundles)
                try:
                    if op < 0.5:
                        model = rng.choice(RESIDENT)
                        r = await c.post(f"{self.url}/predict", json={"model": model, **INPUTS})
                        kind, state = "predict", None
                    elif op < 0.85:
                        h = {"content-type": "application/octet-stream"}
                        if op >= 0.7 and etag:
                            h["if-match"] = etag
                        r = await c.post(f"{self.url}/models?name={name}", content=data, headers=h)
                        kind, state = "write", r.headers.get("etag", "").strip('"') or None
                    else:
                        r = await c.delete(f"{self.url}/models/{name}")
                        kind, state = "write", _GONE
                except httpx.HTTPError:
                    self.status["transport error"] += 1
                    if op >= 0.5:  # a write cut off: not known
                        self.unknown.setdefault(name, []).append(
                            _GONE if op >= 0.85 else self.cid[data]
                        )
                    await asyncio.sleep(0.05)
                    continue
                code, t1 = r.status_code, time.monotonic()
                self.status[str(code)] += 1
                if code == 503 and not self._in_fault(t0, t1, grace=1.0):
                    self.stray_503 += 1
                    print(f"503 outside the fault: {r.text[:200]}", file=sys.stderr)
                if kind == "predict" and self._in_fault(t0, t1):
                    self.during["ok" if code == 200 else str(code)] += 1
                if kind == "write":
                    if code in (200, 201, 204) or (code == 404 and state == _GONE):
                        self.acked[name], self.unknown[name] = state or _GONE, []
                        etag = r.headers.get("etag") if code in (200, 201) else None
                    elif code == 503:
                        self.unknown.setdefault(name, []).append(
                            _GONE if state == _GONE else self.cid[data]
                        )
                        await asyncio.sleep(0.05)
                    elif code == 412:
                        etag = None

    def check(self, url: str) -> tuple[int, int]:
        """(lost acknowledged writes, not-known writes that landed) seen through ``url``."""
        lost = landed = 0
        with httpx.Client(base_url=url, timeout=30) as c:
            for name, want in self.acked.items():
                r = c.get(f"/models/{name}")
                got = r.headers["etag"].strip('"') if r.status_code == 200 else _GONE
                if r.status_code not in (200, 404):
                    raise RuntimeError(f"GET /models/{name}: {r.status_code} {r.text}")
                if got != want:
                    if got in self.unknown.get(name, []):
                        landed += 1
                    else:
                        lost += 1
                        print(f"LOST {name}: acknowledged {want}, store has {got}", file=sys.stderr)
        return lost, landed


def _start(store_url: str, deadline: float) -> ServerProcess:
    return ServerProcess(
        {
            "PEMN_STORE_URL": store_url,
            "PEMN_WRITE_DEADLINE_S": str(deadline),
            "PEMN_POLL_INTERVAL_S": "0.5",
            "PEMN_LOG_LEVEL": "warning",
        },
        timeout=120,
    )


async def _fault(
    run: Run,
    args: argparse.Namespace,
    redis: RedisServer | None,
    box: list[ServerProcess],
    store_url: str,
) -> None:
    await asyncio.sleep(args.seconds * 0.4)
    start = time.monotonic()
    if redis is not None:
        assert redis.proc is not None
        redis.proc.send_signal(signal.SIGKILL)  # no shutdown: AOF fsynced on every write
        redis.proc.wait()
        redis.proc = None
        run.outage = (start, float("inf"))
        await asyncio.sleep(args.outage)
        await asyncio.to_thread(redis.start)
        run.outage = (start, time.monotonic())  # until Redis answers again
    else:
        run.outage = (start, float("inf"))
        box[0].proc.send_signal(signal.SIGKILL)
        box[0].proc.wait()
        box[0].stop()
        new = await asyncio.to_thread(_start, store_url, args.deadline)
        box[0] = new
        run.url = new.url
        run.outage = (start, time.monotonic())


async def _main(args: argparse.Namespace) -> dict[str, Any]:
    tmp = tempfile.TemporaryDirectory(prefix="pemn-soak-")
    redis = RedisServer(persist=True) if args.backend == "redis" else None
    store_url = f"{redis.url}?prefix=soak&timeout=1" if redis else f"{tmp.name}/store"
    box = [_start(store_url, args.deadline)]
    try:
        run = Run(args, box[0].url)
        for i, name in enumerate(RESIDENT):  # resident: uploaded and loaded before the run
            assert box[0].client.post(f"/models?name={name}", content=make_bundle(mask_seed=i),
                                      headers={"content-type": "application/octet-stream"}).status_code == 201  # fmt: skip
            assert box[0].client.post("/predict", json={"model": name, **INPUTS}).status_code == 200
        until = time.monotonic() + args.seconds
        fault = asyncio.create_task(_fault(run, args, redis, box, store_url))
        await asyncio.gather(*(run.client(i, until) for i in range(args.clients)))
        await fault
        await asyncio.sleep(args.deadline + 2)  # anything still in flight has ended
        lost, landed = run.check(box[0].url)
        box[0].stop()
        box[0] = _start(store_url, args.deadline)  # restarted: read back from the store
        lost2, landed2 = run.check(box[0].url)
        served = run.during["ok"]
        total = sum(run.during.values())
        return {
            "backend": args.backend,
            "fault": f"Redis killed for {args.outage:g} s"
            if redis
            else "server SIGKILLed and restarted",
            "clients": args.clients,
            "seconds": args.seconds,
            "requests": sum(run.status.values()),
            "status": dict(sorted(run.status.items())),
            "status_500": run.status.get("500", 0),
            "stray_503": run.stray_503,
            "names_checked": len(run.acked),
            "lost_acknowledged": lost,
            "lost_after_restart": lost2,
            "unacknowledged_landed": max(landed, landed2),
            "fault_seconds": round(run.outage[1] - run.outage[0], 2) if run.outage else None,
            "predictions_during_fault": f"{served}/{total}",
            "predictions_during_fault_pct": round(100 * served / total, 2) if total else None,
        }
    finally:
        box[0].stop()
        if redis:
            redis.close()
        tmp.cleanup()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--backend", choices=["redis", "file"], default="redis")
    p.add_argument("--clients", type=int, default=32)
    p.add_argument("--seconds", type=float, default=60)
    p.add_argument("--outage", type=float, default=10, help="seconds Redis stays down")
    p.add_argument("--deadline", type=float, default=3, help="PEMN_WRITE_DEADLINE_S")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    args = p.parse_args()
    result = asyncio.run(_main(args))
    if args.json:
        print(json.dumps(result))
    else:
        width = max(map(len, result))
        for k, v in result.items():
            print(f"{k:<{width}}  {v}")


if __name__ == "__main__":
    main()
