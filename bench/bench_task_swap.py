"""Task swapping: pemn-serve's throughput when requests go round-robin over 100
tasks on one backbone (consecutive requests name different tasks) vs when all
requests name one task, on the same server in the same run. Goal: >= 0.9x.

All 100 tasks are materialized before measuring (one request each), so the runs
measure swapping, not loading; the cache-miss counter is checked to stay put.
Runs alternate between the two workloads, ``--rounds`` times; medians over rounds.

Run: python -m bench.bench_task_swap [--tasks 100] [--threads 1] [--rounds 3]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
from pathlib import Path

from bench._report import table, write_section
from bench._serving import (
    MODEL,
    Load,
    checkout,
    images,
    inputs_file,
    load_average,
    pemn_server,
    run_load,
    task_bundle,
    upload,
)
from pemn.testing import ServerProcess


def _counters(s: ServerProcess) -> tuple[float, float, float]:
    return (
        s.metric("pemn_batch_size_sum"),
        s.metric("pemn_batch_size_count"),
        s.metric("pemn_cache_misses_total"),
    )


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--tasks", type=int, default=100)
    p.add_argument("--threads", type=int, default=1, help="torch threads in the server")
    p.add_argument("--runtime", choices=["torch", "onnx"], default="torch")
    p.add_argument("--concurrency", default="1,16,64")
    p.add_argument("--duration", type=float, default=10.0, help="measured seconds per run")
    p.add_argument("--warmup", type=float, default=2.0)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--compare", default="", help="git revisions also measured, comma-separated")
    p.add_argument("--no-write", action="store_true", help="print only")
    args = p.parse_args()
    levels = [int(c) for c in args.concurrency.split(",")]
    names = [f"task-{i:03d}" for i in range(args.tasks)]
    workloads = {"one task": names[:1], f"{args.tasks} tasks": names}

    with tempfile.TemporaryDirectory(prefix="pemn-bench-") as tmp:
        root = Path(tmp)
        x = images(1)
        inputs = inputs_file(x, root)
        servers: dict[str, ServerProcess] = {}
        try:
            versions = {"pemn": None} | {
                f"pemn@{rev}": checkout(rev) for rev in filter(None, args.compare.split(","))
            }
            for label, code in versions.items():
                s = servers[label] = pemn_server(
                    root / f"store-{len(servers)}", args.threads, code, runtime=args.runtime
                )
                for i, name in enumerate(names):
                    upload(s, name, task_bundle(i))
                for name in names:  # materialize every task
                    s.client.post("/predict", json={"model": name, "inputs": x.tolist()})
                status = s.client.get("/status").json()
                assert status["tasks"] == args.tasks and status["backbones"] == 1, status
                print(
                    f"{label}: {status['tasks']} tasks resident on {status['backbones']} backbone",
                    flush=True,
                )

            runs: dict[tuple[str, str, int], list[Load]] = {}
            batch: dict[tuple[str, str, int], list[float]] = {}
            loads: list[str] = []
            misses = 0.0
            for r in range(args.rounds):
                for c in levels:
                    for label, s in servers.items():
                        order = list(workloads) if r % 2 == 0 else list(reversed(workloads))
                        for wl in order:
                            before = _counters(s)
                            res = run_load(
                                s.url,
                                workloads[wl],
                                inputs,
                                concurrency=c,
                                duration=args.duration,
                                warmup=args.warmup,
                            )
                            after = _counters(s)
                            misses += after[2] - before[2]
                            key = (label, wl, c)
                            runs.setdefault(key, []).append(res)
                            batch.setdefault(key, []).append(
                                (after[0] - before[0]) / max(after[1] - before[1], 1)
                            )
                            loads.append(load_average())
                            print(
                                f"round {r} c={c:3d} {label} {wl:10s} {res.throughput:7.1f} req/s "
                                f"p50 {res.p50:6.1f} ms p99 {res.p99:6.1f} ms "
                                f"batch {batch[key][-1]:5.1f}  load {loads[-1]}",
                                flush=True,
                            )
        finally:
            for s in servers.values():
                s.stop()

    one, many = workloads
    rows = []
    for label in servers:
        for c in levels:
            a = Load.median_of(runs[(label, one, c)])
            b = Load.median_of(runs[(label, many, c)])
            ratio = b.throughput / a.throughput
            rows.append(
                [
                    label,
                    c,
                    f"{a.throughput:.0f}",
                    f"{b.throughput:.0f}",
                    f"**{ratio:.2f}x** {'met' if ratio >= 0.9 else 'missed'}",
                    f"{a.p50:.1f} / {a.p99:.1f}",
                    f"{b.p50:.1f} / {b.p99:.1f}",
                    f"{statistics.median(batch[(label, one, c)]):.1f}",
                    f"{statistics.median(batch[(label, many, c)]):.1f}",
                ]
            )
    header = [
        "server",
        "concurrency",
        "one task req/s",
        f"{many} req/s",
        "ratio (goal >= 0.9x)",
        "one task p50 / p99 ms",
        f"{many} p50 / p99 ms",
        "one task mean batch",
        f"{many} mean batch",
    ]
    errors = sum(r.errors for v in runs.values() for r in v)
    ratios = {
        c: Load.median_of(runs[("pemn", many, c)]).throughput
        / Load.median_of(runs[("pemn", one, c)]).throughput
        for c in levels
    }
    missed = [c for c, r in ratios.items() if r < 0.9]
    verdict = (
        "met at every concurrency"
        if not missed
        else "missed at concurrency " + ", ".join(map(str, missed))
    )
    goal = (
        f"Goal (round-robin >= 0.9x one task, pemn-serve): "
        f"{', '.join(f'{r:.2f}x at {c}' for c, r in ratios.items())}: **{verdict}**."
    )
    body = f"""
Model: {MODEL}; {args.tasks} tasks = {args.tasks} bundles over the same backbone
(`make_bundle(..., mask_seed=i)`), all materialized ({args.runtime} runtime) before measuring;
cache misses during the runs: {misses:.0f}. One image per request as nested JSON
lists; torch pinned to {args.threads} thread(s); local-directory store. Load:
`bench/_loadgen.py` in its own process, closed-loop, {args.warmup:g} s warm-up then
{args.duration:g} s measured; "{many}" sends request i to task i mod {args.tasks}.
The two workloads alternate, {args.rounds} rounds, medians over rounds. Errors
(non-200): {errors}. Load average (1/5/15 min) during the runs: from {loads[0]} to
{loads[-1]}.

{table(header, rows)}

{goal}
"""
    print(body)
    if not args.no_write:
        suffix = "" if args.runtime == "torch" else f"_{args.runtime}"
        write_section(
            f"task_swap{suffix}",
            f"Task swapping: round-robin over {args.tasks} tasks vs one task ({args.runtime})",
            body,
            "python -m bench.bench_task_swap " + " ".join(sys.argv[1:]),
        )


if __name__ == "__main__":
    main()
