"""Task swapping: pemn-serve's throughput when requests go round-robin over many
tasks on one backbone (consecutive requests name different tasks) vs when all
requests name one task, on the same server in the same run. Goal: >= 0.9x.

Two servers per runtime, the same ``--tasks`` bundles on each, every task's packed
form resident (one request each before measuring): one whose materialized tier
holds every task, one whose tier holds ``--hot`` tasks (the rest are expanded from
their packed form when their batch runs). Each server's own one-task throughput is
its baseline. Runs alternate between the two workloads and the servers,
``--rounds`` times; medians over rounds.

Run: python -m bench.bench_task_swap [--tasks 1000] [--hot 10] [--runtime torch]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

from bench._report import table, write_section
from bench._serving import (
    MODEL,
    Load,
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
        s.metric("pemn_materialize_seconds_count", kind="packed"),
    )


def _warm(s: ServerProcess, names: list[str], x: list) -> dict:  # type: ignore[type-arg]
    for name in names:
        r = s.client.post("/predict", json={"model": name, "inputs": x})
        if r.status_code != 200:
            raise RuntimeError(f"{name}: {r.status_code} {r.text}")
    return s.client.get("/status").json()  # type: ignore[no-any-return]


def _until_onnx(s: ServerProcess, name: str, x: list, timeout: float = 180) -> None:  # type: ignore[type-arg]
    """Runtime auto: keep task ``name`` hot until its ONNX session serves it."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        r = s.client.post("/predict", json={"model": name, "inputs": x})
        if r.status_code == 200 and r.json()["runtime"] == "onnx":
            return
    raise RuntimeError(f"{name} still not on its ONNX session after {timeout:.0f} s")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--tasks", type=int, default=1000)
    p.add_argument("--hot", type=int, default=10, help="tasks the small materialized tier holds")
    p.add_argument("--threads", type=int, default=1, help="torch threads in the server")
    p.add_argument("--runtime", choices=["torch", "onnx", "auto"], default="torch")
    p.add_argument("--mixed", choices=["per_sample", "per_task"], default=None)
    p.add_argument("--device", default="cpu", help="the servers' PEMN_DEVICE")
    p.add_argument("--concurrency", default="1,16,64")
    p.add_argument("--duration", type=float, default=8.0, help="measured seconds per run")
    p.add_argument("--warmup", type=float, default=2.0)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--no-write", action="store_true", help="print only")
    args = p.parse_args()
    levels = [int(c) for c in args.concurrency.split(",")]
    names = [f"task-{i:04d}" for i in range(args.tasks)]
    many = f"{args.tasks} tasks"
    workloads = {"one task": names[:1], many: names}
    extra = {"mixed_batches": args.mixed} if args.mixed else {}
    extra["device"] = args.device

    with tempfile.TemporaryDirectory(prefix="pemn-bench-") as tmp:
        root = Path(tmp)
        x = images(1)
        inputs = inputs_file(x, root)
        servers: dict[str, ServerProcess] = {}
        try:
            # the size of one materialized task on this runtime, from a probe server
            probe = pemn_server(
                root / "store-probe", args.threads, runtime=args.runtime, device=args.device
            )
            upload(probe, names[0], task_bundle(0))
            one = _warm(probe, names[:1], x.tolist())
            task_bytes = one["task_bytes"] // max(one["tasks"], 1)
            probe.stop()
            tiers = {"tier holds all": 1 << 40, f"tier holds {args.hot}": args.hot * task_bytes}
            for label, cache in tiers.items():
                s = servers[label] = pemn_server(
                    root / f"store-{len(servers)}",
                    args.threads,
                    runtime=args.runtime,
                    cache_bytes=str(cache),
                    packed_bytes=str(1 << 40),
                    **extra,
                )
                for i, name in enumerate(names):
                    upload(s, name, task_bundle(i))
                status = _warm(s, names, x.tolist())
                if args.runtime == "auto":
                    _until_onnx(s, names[0], x.tolist())
                assert status["packed_tasks"] == args.tasks and status["backbones"] == 1, status
                print(
                    f"{label}: {status['packed_tasks']} packed, {status['tasks']} materialized "
                    f"({status['task_bytes'] / 1e6:.1f} MB) on {status['backbones']} backbone",
                    flush=True,
                )

            runs: dict[tuple[str, str, int], list[Load]] = {}
            batch: dict[tuple[str, str, int], list[float]] = {}
            loads: list[str] = [load_average()]
            refetched = 0.0
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
                            refetched += after[2] - before[2]
                            key = (label, wl, c)
                            runs.setdefault(key, []).append(res)
                            batch.setdefault(key, []).append(
                                (after[0] - before[0]) / max(after[1] - before[1], 1)
                            )
                            loads.append(load_average())
                            print(
                                f"round {r} c={c:3d} {label:16s} {wl:10s} {res.throughput:7.1f} req/s "
                                f"p50 {res.p50:6.1f} ms p99 {res.p99:6.1f} ms "
                                f"batch {batch[key][-1]:5.1f}  load {loads[-1]}",
                                flush=True,
                            )
            lanes = {label: s.client.get("/status").json()["lanes"] for label, s in servers.items()}
        finally:
            for s in servers.values():
                s.stop()

    rows = []
    for label in servers:
        for c in levels:
            a = Load.median_of(runs[(label, "one task", c)])
            b = Load.median_of(runs[(label, many, c)])
            rows.append(
                [
                    label,
                    c,
                    f"{a.throughput:.0f}",
                    f"{b.throughput:.0f}",
                    f"**{b.throughput / a.throughput:.2f}x**",
                    f"{a.p50:.1f} / {a.p99:.1f}",
                    f"{b.p50:.1f} / {b.p99:.1f}",
                    f"{statistics.median(batch[(label, 'one task', c)]):.1f}",
                    f"{statistics.median(batch[(label, many, c)]):.1f}",
                ]
            )
    header = [
        "materialized tier",
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
    modes = sorted(
        {lane.get("mixed_mode", "per_task") for v in lanes.values() for lane in v.values()}
    )
    body = f"""
Model: {MODEL}; {args.tasks} tasks = {args.tasks} bundles over the same backbone
(`make_bundle(..., mask_seed=i)`), {args.runtime} runtime on {args.device}, mixed batches run
{", ".join(modes)}; every task packed-resident before measuring (tasks fetched again
from the store during the runs: {refetched:.0f}). One materialized task:
{task_bytes:,} bytes. One image per request as nested JSON lists; torch pinned to
{args.threads} thread(s); local-directory store. Load: `bench/_loadgen.py` in its own
process, closed-loop, {args.warmup:g} s warm-up then {args.duration:g} s measured;
"{many}" sends request i to task i mod {args.tasks}. Workloads and servers alternate,
{args.rounds} rounds, medians over rounds. Errors (non-200): {errors}. Load average
(1/5/15 min): from {loads[0]} to {loads[-1]}.

{table(header, rows)}
"""
    print(body)
    if not args.no_write:
        suffix = "" if args.runtime == "torch" else f"_{args.runtime}"
        suffix += "" if args.device == "cpu" else f"_{args.device.split(':')[0]}"
        write_section(
            f"task_swap{suffix}",
            f"Task swapping: round-robin over {args.tasks} tasks vs one task "
            f"({args.runtime}, {args.device})",
            body,
            "python -m bench.bench_task_swap " + " ".join(sys.argv[1:]),
        )


if __name__ == "__main__":
    main()
