"""Scale-out convergence: how long until every replica serves a new version.

Three ``python -m service`` processes on loopback share one private Redis store
(as Kubernetes replicas do). Each round uploads a new version of one task through
replica 0, then measures, from the moment that upload returns, how long replicas 1
and 2 take to list the new content id (each polled by its own thread, every 2 ms
for 0.2 s, then every 10 ms); a ``/predict`` on each then checks that it serves that
version. Between rounds the script sleeps a random fraction of the poll interval so
uploads do not fall in step with the replicas' poll timers.

Modes (one cluster each):
  pub/sub         PEMN_STORE_HINTS=true: the store's pub/sub message wakes the
                  replicas; the epoch poll (every PEMN_POLL_INTERVAL_S) is the backstop
  polling only    PEMN_STORE_HINTS=false: every pub/sub message lost; replicas find
                  the change by polling the store's epoch alone

    python -m bench.bench_scaleout [--rounds 30] [--poll-intervals 2,0.5] [--no-write]

pub/sub runs at the first interval; polling only at each interval given.

Writes the section ``scaleout`` of docs/benchmarks.md (bench._report.write_section).
"""

from __future__ import annotations

import argparse
import random
import sys
import time
from pathlib import Path

from bench._report import percentile, table, write_section
from pemn.testing import (
    Cluster,
    RedisServer,
    make_bundle,
)

ROOT = Path(__file__).resolve().parents[1]

REPLICAS = (1, 2)


def _round_bundles(rounds: int) -> list[bytes]:
    """One distinct valid bundle per round (same backbone, different masks)."""
    return [make_bundle(mask_seed=1000 + i) for i in range(rounds + 1)]


def run_mode(
    redis_url: str, hints: bool, rounds: int, poll_s: float, bundles: list[bytes], seed: int
) -> tuple[list[float], list[float], float]:
    """Per-replica convergence times (s), upload times (s) and the cluster start time."""
    rng = random.Random(seed)
    t = time.perf_counter()
    with Cluster(redis_url, hints=[hints] * 3, poll_interval_s=poll_s) as cluster:
        started = time.perf_counter() - t
        name = "scaleout-task"
        first = cluster.upload(0, name, bundles[0])  # warm-up: v1 everywhere, loaded once
        cluster.converge(REPLICAS, name, first["content_id"], since=time.perf_counter())
        times: list[float] = []
        uploads: list[float] = []
        for i in range(1, rounds + 1):
            time.sleep(rng.uniform(0, poll_s))
            t0 = time.perf_counter()
            body = cluster.upload(0, name, bundles[i])
            since = time.perf_counter()
            uploads.append(since - t0)
            took = cluster.converge(REPLICAS, name, body["content_id"], since=since, timeout=60)
            times += [took[r] for r in REPLICAS]
            for r in REPLICAS:
                got = cluster.replicas[r].client.post(
                    "/predict", json={"model": name, "inputs": [[[[0.0] * 28] * 28]]}
                )
                if got.status_code != 200 or got.json()["version"] != body["version"]:
                    raise SystemExit(f"replica {r} does not serve v{body['version']}: {got.text}")
            print(
                f"  {'pub/sub' if hints else 'polling'} round {i:>3}: "
                + ", ".join(f"replica {r} {1000 * took[r]:7.1f} ms" for r in REPLICAS),
                flush=True,
            )
    return times, uploads, started


def _ms(x: float) -> str:
    return f"{1000 * x:.1f}"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rounds", type=int, default=30, help="new versions per mode (default 30)")
    p.add_argument(
        "--poll-intervals",
        type=lambda v: [float(x) for x in v.split(",")],
        default=[2.0, 0.5],
        help="PEMN_POLL_INTERVAL_S values, comma-separated (default 2,0.5; 2 is the service "
        "default); pub/sub runs at the first, polling only at each",
    )
    p.add_argument("--seed", type=int, default=0, help="seed of the pauses between rounds")
    p.add_argument("--no-write", action="store_true", help="print only; leave docs/ alone")
    args = p.parse_args(argv)

    bundles = _round_bundles(args.rounds)
    rows = []
    with RedisServer() as redis:
        modes = [(True, args.poll_intervals[0])] + [(False, p) for p in args.poll_intervals]
        for hints, poll_s in modes:
            label = "pub/sub (hints on)" if hints else "polling only (hints off)"
            print(f"== {label}, poll {poll_s:g} s: 3 replicas, {args.rounds} rounds", flush=True)
            times, uploads, started = run_mode(
                redis.url, hints, args.rounds, poll_s, bundles, args.seed
            )
            rows.append(
                [
                    label,
                    f"{poll_s:g} s",
                    len(times),
                    _ms(percentile(times, 50)),
                    _ms(percentile(times, 99)),
                    _ms(max(times)),
                    _ms(percentile(uploads, 50)),
                    f"{started:.0f} s",
                ]
            )
    header = [
        "mode",
        "poll interval",
        "samples (rounds x 2 replicas)",
        "p50 ms",
        "p99 ms",
        "max ms",
        "upload p50 ms",
        "3 replicas ready after",
    ]
    body = (
        "Three `python -m service` processes on loopback over one private `redis-server`; "
        "each round uploads a new version of one task (an MLP bundle, ~8 KB) through "
        "replica 0 and times, from the moment that upload returns, until replicas 1 and 2 "
        "list the new content id (polled every 2 ms for 0.2 s, then every 10 ms, so "
        "figures carry up to that much polling slack); each then answers `/predict` with "
        "the new version. A random pause of up to one poll interval separates rounds. "
        "*Polling only* runs the replicas with `PEMN_STORE_HINTS=false`: every pub/sub "
        "message is lost and a change is found by polling the store's epoch alone, so it "
        "costs up to one poll interval (plus a listing) and never correctness.\n\n"
        + table(header, rows)
        + "\n"
    )
    if args.no_write:
        print(table(header, rows))
    else:
        write_section(
            "scaleout",
            "Scale-out: replicas converging on a new version over one Redis store",
            body,
            f"python -m bench.bench_scaleout --rounds {args.rounds} --poll-intervals "
            + ",".join(f"{p:g}" for p in args.poll_intervals),
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
