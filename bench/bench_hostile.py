"""Hostile clients against the server, with and without the connection limits.

Servers (each ``python -m ...`` on loopback, file store, the demo bundle
fashion-mnist, at most 1,024 open files as in the issue's report):

* ``stock``: ``uvicorn service.main:app`` (uvicorn's own defaults: httptools, no
  header cap, no header deadline, no connection cap): the server before issue 14;
* ``guarded``: ``python -m service`` (service/connections.py over httptools, the
  default); ``guarded-h11``: the same over h11 (``PEMN_HTTP_PARSER=h11``), measured
  only without an attack to choose the parser.

Phases, each bounded in time (``--seconds``), run against every server in turn;
all attack traffic comes from 127.0.0.1 and stops at the phase's end:

* ``quiet``: no attack;
* ``slow-headers``: 200 connections sending one header line a second;
* ``big-headers``: 10 clients, each sending requests with a 64 MB header, again
  and again;
* ``idle-half``: 1,100 connections that send half a request's headers and stop;
* ``chunked-bodies``: 45 clients each sending a 31 MiB chunked body, then waiting.

Throughout, a separate client (127.0.0.2, a new connection per request) sends a
prediction every 0.2 s; its answers within 1 s, its median and worst latency, and
the server's peak RSS (``VmRSS``) are reported, with what became of the attack's
connections. Results: docs/benchmarks.md, section "hostile".

    python -m bench.bench_hostile [--seconds 14]
"""

from __future__ import annotations

import argparse
import contextlib
import os
import resource
import socket
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path

import httpx
import numpy as np

from bench._report import table, write_section
from pemn.testing import HttpProcess, free_port

ROOT = Path(__file__).resolve().parents[1]
BUNDLES = ROOT / "examples" / "bundles"
FD_LIMIT = 1024
PROBE_FROM = "127.0.0.2"
BIG = b"GET / HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * (64 * 2**20) + b"\r\n\r\n"


def _limit_fds() -> None:
    resource.setrlimit(resource.RLIMIT_NOFILE, (FD_LIMIT, FD_LIMIT))


class Server(HttpProcess):
    """One server under test (``argv``: the module and its options), on the example
    bundles, a private directory store and at most ``FD_LIMIT`` open files."""

    def __init__(self, name: str, argv: list[str], env: dict[str, str]) -> None:
        self.name = name
        self.store = tempfile.TemporaryDirectory(prefix=f"pemn-hostile-{name}-")
        port = free_port()
        full = {k: v for k, v in os.environ.items() if not k.startswith("PEMN_")}
        full |= {
            "PYTHONPATH": str(ROOT),
            "PEMN_STORE_URL": str(Path(self.store.name) / "store"),
            "PEMN_PRELOAD_DIR": str(BUNDLES),
            "PEMN_PRELOAD": "*",
            "PEMN_INFERENCE_THREADS": "1",
            "PEMN_LOG_LEVEL": "warning",
            **env,
        }
        super().__init__(
            [sys.executable, *argv, "--port", str(port)],
            full,
            port=port,
            ready_path="/v2/health/ready",
            timeout=120,
            preexec_fn=_limit_fds,
        )

    def rss_mb(self) -> float:
        for line in Path(f"/proc/{self.proc.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
        return 0.0

    def stop(self) -> None:
        super().stop()
        self.store.cleanup()


# ---------------------------------------------------------------- attacks
def _is_closed(s: socket.socket) -> bool:
    """Without waiting: whether the server closed (or answered, then closes) ``s``."""
    s.setblocking(False)
    try:
        s.recv(4096)  # end of stream, or an answer before closing
        return True
    except BlockingIOError:
        return False
    except OSError:
        return True


def _crowd(
    client: Callable[[], None], n: int, stop: threading.Event, counts: dict[str, int]
) -> str:
    """Runs ``client`` in ``n`` threads until ``stop``; the outcomes they counted."""
    threads = [threading.Thread(target=client, daemon=True) for _ in range(n)]
    for t in threads:
        t.start()
    stop.wait()
    for t in threads:
        t.join(30)
    return ", ".join(f"{k} x{v}" for k, v in sorted(counts.items()))


def slow_headers(port: int, stop: threading.Event, out: dict[str, object]) -> None:
    socks = []
    for _ in range(200):
        try:
            s = socket.create_connection(("127.0.0.1", port), timeout=5)
            s.sendall(b"GET /v2/health/live HTTP/1.1\r\nHost: x\r\n")
            socks.append(s)
        except OSError:
            pass
    opened, alive = len(socks), list(socks)
    start = time.monotonic()
    after_5s = None
    while not stop.wait(1.0):
        if after_5s is None and time.monotonic() - start >= 5:
            after_5s = sum(not _is_closed(s) for s in alive)
        still = []
        for s in alive:
            if _is_closed(s):
                continue
            try:
                s.send(b"X-Slow: 1\r\n")
                still.append(s)
            except OSError:
                pass
        alive = still
    out["attack"] = f"{opened} opened; open after 5 s: {after_5s}, at the end: {len(alive)}"
    for s in socks:
        s.close()


def big_headers(port: int, stop: threading.Event, out: dict[str, object]) -> None:
    counts: dict[str, int] = {}
    lock = threading.Lock()

    def client() -> None:
        while not stop.is_set():
            outcome = "no answer"
            try:
                with socket.create_connection(("127.0.0.1", port), timeout=20) as s:
                    with contextlib.suppress(OSError):
                        s.sendall(BIG)
                    answer = s.recv(64)
                    outcome = answer[9:12].decode() if answer.startswith(b"HTTP/") else "closed"
            except OSError:
                outcome = "reset"
            with lock:
                counts[outcome] = counts.get(outcome, 0) + 1

    out["attack"] = "requests: " + _crowd(client, 10, stop, counts)


def idle_half(port: int, stop: threading.Event, out: dict[str, object]) -> None:
    socks, failed = [], 0
    start = time.monotonic()
    for _ in range(1100):
        if stop.is_set():
            break
        try:
            s = socket.create_connection(("127.0.0.1", port), timeout=2)
            s.sendall(b"POST /predict HTTP/1.1\r\nHost: x\r\nContent-Length: 1000\r\n")
            socks.append(s)
        except OSError:
            failed += 1
    opened = time.monotonic() - start
    stop.wait(max(0.0, 5 - opened))
    after_5s = sum(not _is_closed(s) for s in socks)
    stop.wait()
    alive = sum(not _is_closed(s) for s in socks)
    out["attack"] = (
        f"{len(socks)} connected in {opened:.1f} s ({failed} failed); "
        f"open after 5 s: {after_5s}, at the end: {alive}"
    )
    for s in socks:
        s.close()


class _Answered(Exception):
    pass


def chunked_bodies(port: int, stop: threading.Event, out: dict[str, object]) -> None:
    """45 clients, each sending a chunked /predict body of up to 32 MiB (1 MiB chunks,
    then holding it open): without a global budget the server holds 45 x 32 MiB."""
    counts: dict[str, int] = {}
    lock = threading.Lock()
    chunk = b"%x\r\n" % 2**20 + b" " * 2**20 + b"\r\n"

    def client() -> None:
        outcome = "held to the end"
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=30) as s:
                s.sendall(
                    b"POST /predict HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                    b"Transfer-Encoding: chunked\r\n\r\n"
                )
                try:
                    for _ in range(31):
                        if stop.is_set():
                            break
                        s.sendall(chunk)
                except OSError:  # refused mid-body: read the answer if it arrived
                    s.settimeout(1)
                    answer = s.recv(64)
                    outcome = answer[9:12].decode() if answer.startswith(b"HTTP/") else "reset"
                    raise _Answered from None
                s.setblocking(False)
                while not stop.wait(0.2):
                    try:
                        answer = s.recv(64)
                    except BlockingIOError:
                        continue
                    outcome = answer[9:12].decode() if answer.startswith(b"HTTP/") else "closed"
                    break
        except _Answered:
            pass
        except OSError:
            outcome = "reset"
        with lock:
            counts[outcome] = counts.get(outcome, 0) + 1

    out["attack"] = "clients: " + _crowd(client, 45, stop, counts)


ATTACKS = {
    "slow-headers": slow_headers,
    "big-headers": big_headers,
    "idle-half": idle_half,
    "chunked-bodies": chunked_bodies,
}


# ---------------------------------------------------------------- one phase
def phase(server: Server, attack: str, seconds: float) -> dict[str, object]:
    stop = threading.Event()
    out: dict[str, object] = {"attack": "-"}
    attacker = None
    if attack in ATTACKS:
        attacker = threading.Thread(target=ATTACKS[attack], args=(server.port, stop, out))
        attacker.start()
        time.sleep(0.5)  # let it open its connections
    body = {"model": "fashion-mnist", "inputs": np.zeros((1, 1, 28, 28)).tolist()}
    latencies: list[float] = []
    failures = 0
    rss = [server.rss_mb()]
    end = time.monotonic() + seconds
    transport = httpx.HTTPTransport(local_address=PROBE_FROM)
    with httpx.Client(
        base_url=server.url,
        timeout=5.0,
        transport=transport,
        limits=httpx.Limits(max_keepalive_connections=0),
    ) as probe:
        while time.monotonic() < end:
            t = time.perf_counter()
            try:
                ok = probe.post("/predict", json=body).status_code == 200
            except httpx.HTTPError:
                ok = False
            if ok:
                latencies.append(time.perf_counter() - t)
            else:
                failures += 1
            rss.append(server.rss_mb())
            time.sleep(max(0.0, 0.2 - (time.perf_counter() - t)))
    stop.set()
    if attacker is not None:
        attacker.join(60)
    sent = len(latencies) + failures
    within = sum(x <= 1.0 for x in latencies)
    return {
        "server": server.name,
        "phase": attack,
        "within_1s": f"{within}/{sent}",
        "p50_ms": round(statistics.median(latencies) * 1000, 1) if latencies else "-",
        "max_ms": round(max(latencies) * 1000, 1) if latencies else "-",
        "rss_mb": round(max(rss)),
        "attack": out["attack"],
        "alive": server.proc.poll() is None,
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--seconds", type=float, default=14.0, help="length of each phase")
    p.add_argument("--no-write", action="store_true", help="print only")
    p.add_argument("--phases", default=",".join(["quiet", *ATTACKS]), help="comma-separated subset")
    args = p.parse_args()
    _soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))  # the attacker's 1,100 sockets
    key = {"PEMN_API_KEY": "bench-key-0123456789abcdef"}
    servers = [
        # stock: also without the app's body budget and deadline (as before issue 14)
        Server(
            "stock",
            ["-m", "uvicorn", "service.main:app", "--host", "127.0.0.1"],
            key | {"PEMN_BODY_BUDGET_BYTES": str(2**40), "PEMN_BODY_TIMEOUT_S": "3600"},
        ),
        Server("guarded", ["-m", "service", "--host", "127.0.0.1"], key),
        Server(
            "guarded-h11",
            ["-m", "service", "--host", "127.0.0.1"],
            key | {"PEMN_HTTP_PARSER": "h11"},
        ),
    ]
    rows = []
    try:
        for attack in args.phases.split(","):
            for server in servers:
                if server.name == "guarded-h11" and attack != "quiet":
                    continue
                result = phase(server, attack, args.seconds)
                print(result, flush=True)
                rows.append(result)
                time.sleep(2.0)
    finally:
        for server in servers:
            server.stop()
    header = [
        "phase",
        "server",
        "probe answers <= 1 s",
        "p50 ms",
        "max ms",
        "peak RSS MB",
        "attack",
    ]
    body = table(
        header,
        [
            [
                r["phase"],
                r["server"],
                r["within_1s"],
                r["p50_ms"],
                r["max_ms"],
                r["rss_mb"],
                r["attack"],
            ]
            for r in rows
        ],
    )
    text = f"""
Each phase {args.seconds:g} s; every server limited to {FD_LIMIT} open files (as in
the issue's report). The probe is a separate client (127.0.0.2) sending one
prediction every 0.2 s over a new connection; the attacks come from 127.0.0.1.
`stock` is `uvicorn service.main:app` (uvicorn's defaults; no body budget, no body
deadline), `guarded` is `python -m service` with its defaults (64 KiB headers, 10 s
header deadline, 2,048 connections (here lowered to fit 1,024 files), 256 per
client, 256 MiB of bodies in flight, 30 s body deadline),
`guarded-h11` the same over h11, measured without attack to choose the parser.

{body}
"""
    if args.no_write:
        print(text)
    else:
        write_section(
            "hostile",
            "Hostile clients: slow headers, 64 MB headers, idle half-requests",
            text,
            "python -m bench.bench_hostile",
        )


if __name__ == "__main__":
    main()
