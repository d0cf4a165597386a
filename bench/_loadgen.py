"""Closed-loop HTTP load generator for the serving benchmarks, run as its own process
(never inside a server): N workers, each on its own keep-alive connection, send
``POST`` requests back to back for ``warmup + duration`` seconds; requests that start
after the warm-up and finish inside the window count. Request ``i`` (over all
workers) names model ``models[i % len(models)]``, so a list of 100 names is a global
round-robin over 100 tasks.

The client is a few lines of asyncio over raw HTTP/1.1 with every request body
encoded once up front: on a 2-core machine a heavier client (httpx: about 1 ms of
CPU per request) would take CPU from the servers it measures. Every response's
status is checked; any non-200 counts as an error.

    python -m bench._loadgen --url http://127.0.0.1:8000 --models a,b --inputs x.json \
        --concurrency 16 --duration 10 --warmup 2

prints one JSON object: requests, errors, seconds, throughput (requests/s),
latency percentiles in ms (client side), and a sample of error bodies.

``--body FILE --content-type TYPE`` sends that file as every request's body instead
(e.g. a multipart form holding a PNG); ``--models`` and ``--inputs`` are then unused.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import sys
import time
from pathlib import Path
from urllib.parse import urlsplit

__all__ = ["main"]


def _bodies(models: list[str], inputs: str, extra: dict[str, object]) -> list[bytes]:
    """One request body per model: ``{"model": m, "inputs": <inputs>, **extra}``."""
    tail = "".join(f", {json.dumps(k)}: {json.dumps(v)}" for k, v in extra.items())
    return [f'{{"model": {json.dumps(m)}, "inputs": {inputs}{tail}}}'.encode() for m in models]


class _Conn:
    def __init__(self, host: str, port: int) -> None:
        self.host, self.port = host, port
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None

    async def request(self, head: bytes, body: bytes) -> tuple[int, bytes]:
        if self.writer is None:
            self.reader, self.writer = await asyncio.open_connection(self.host, self.port)
        assert self.reader is not None
        self.writer.write(head + body)
        raw = await self.reader.readuntil(b"\r\n\r\n")
        status = int(raw[9:12])
        length = None
        close = False
        for line in raw.split(b"\r\n")[1:]:
            name, _, value = line.partition(b":")
            name = name.strip().lower()
            if name == b"content-length":
                length = int(value)
            elif name == b"connection" and value.strip().lower() == b"close":
                close = True
        if length is None:
            raise RuntimeError(f"response without content-length: {raw[:200]!r}")
        data = await self.reader.readexactly(length)
        if close:
            self.close()
        return status, data

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
        self.reader = self.writer = None


async def _run(args: argparse.Namespace) -> dict[str, object]:
    from bench._report import percentile

    url = urlsplit(args.url)
    host, port = url.hostname or "127.0.0.1", url.port or 80
    if args.body:
        bodies = [Path(args.body).read_bytes()]
    else:
        inputs = Path(args.inputs).read_text()
        bodies = _bodies(args.models.split(","), inputs, json.loads(args.extra))
    heads = [
        (
            f"POST {args.path} HTTP/1.1\r\nHost: {host}:{port}\r\n"
            f"Content-Type: {args.content_type}\r\nContent-Length: {len(b)}\r\n\r\n"
        ).encode()
        for b in bodies
    ]
    counter = itertools.count()
    start = time.perf_counter()
    measure_from = start + args.warmup
    stop = measure_from + args.duration
    latencies: list[float] = []
    errors: list[str] = []
    error_count = 0

    async def worker() -> None:
        nonlocal error_count
        conn = _Conn(host, port)
        try:
            while True:
                t0 = time.perf_counter()
                if t0 >= stop:
                    return
                i = next(counter) % len(bodies)
                try:
                    status, data = await conn.request(heads[i], bodies[i])
                except (OSError, asyncio.IncompleteReadError, RuntimeError) as exc:
                    conn.close()
                    status, data = 0, repr(exc).encode()
                t1 = time.perf_counter()
                if t0 >= measure_from and t1 <= stop:
                    if status == 200:
                        latencies.append(t1 - t0)
                    else:
                        error_count += 1
                        if len(errors) < 5:
                            errors.append(f"{status}: {data[:300].decode(errors='replace')}")
        finally:
            conn.close()

    await asyncio.gather(*(worker() for _ in range(args.concurrency)))
    ms = [1000 * v for v in latencies]
    out: dict[str, object] = {
        "requests": len(ms),
        "errors": error_count,
        "seconds": args.duration,
        "throughput": len(ms) / args.duration,
        "error_samples": errors,
    }
    if ms:
        out.update({f"p{q}": percentile(ms, q) for q in (50, 90, 99)} | {"mean": sum(ms) / len(ms)})
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench._loadgen", description=__doc__)
    p.add_argument("--url", required=True, help="server base URL")
    p.add_argument("--path", default="/predict")
    p.add_argument("--models", default="", help="comma-separated model names (round-robin)")
    p.add_argument("--inputs", default="", help="file holding the JSON of the inputs field")
    p.add_argument("--body", default="", help="send this file as every body instead")
    p.add_argument("--content-type", default="application/json", help="of every body")
    p.add_argument("--extra", default="{}", help="more JSON fields of every body")
    p.add_argument("--concurrency", type=int, default=1)
    p.add_argument("--duration", type=float, default=10.0, help="measured seconds")
    p.add_argument("--warmup", type=float, default=2.0, help="seconds before measuring")
    args = p.parse_args(argv)
    try:
        from uvloop import run
    except ImportError:  # pragma: no cover - uvloop comes with uvicorn[standard]
        run = asyncio.run
    print(json.dumps(run(_run(args))))
    return 0


if __name__ == "__main__":
    sys.exit(main())
