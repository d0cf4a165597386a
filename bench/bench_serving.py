"""Serving: throughput and client-side p50/p99 latency of pemn-serve at concurrency
1, 16 and 64, against the plain FastAPI + PyTorch server of
``bench/baseline_server.py`` holding the same network dense, in the same run.

Both servers run at once on loopback with the same torch thread count; one request
carries one Fashion-MNIST image as nested JSON lists; the load generator
(``bench/_loadgen.py``, its own process) runs closed-loop workers for a fixed time
after a warm-up. Runs alternate between the servers, ``--rounds`` times; the table
gives the median over rounds. pemn-serve is also run with its ONNX Runtime backend
(``PEMN_RUNTIME=onnx``) as a third column unless ``--no-onnx``.

Run: python -m bench.bench_serving [--threads 1] [--duration 10] [--rounds 3]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from bench._report import table, write_section
from bench._serving import (
    MODEL,
    BaselineServer,
    Load,
    checkout,
    images,
    inputs_file,
    load_average,
    pemn_server,
    run_load,
    task_bundle,
    upload,
    write_dense_model,
)
from pemn.testing import ServerProcess

NAME = "fashion"


def _logits(client, x: np.ndarray) -> np.ndarray:  # type: ignore[no-untyped-def]
    r = client.post("/predict", json={"model": NAME, "inputs": x.tolist(), "return_logits": True})
    r.raise_for_status()
    return np.array([o["logits"] for o in r.json()["outputs"]], np.float32)


def _until_onnx(s: ServerProcess, x: np.ndarray, timeout: float = 180) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        r = s.client.post("/predict", json={"model": NAME, "inputs": x[:1].tolist()})
        if r.status_code == 200 and r.json()["runtime"] == "onnx":
            return
    raise RuntimeError(f"the auto runtime did not move {NAME} to ONNX in {timeout:.0f} s")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--threads", type=int, default=1, help="torch threads in both servers")
    p.add_argument("--concurrency", default="1,16,64")
    p.add_argument("--duration", type=float, default=10.0, help="measured seconds per run")
    p.add_argument("--warmup", type=float, default=2.0)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--no-onnx", action="store_true", help="skip the pemn-serve ONNX column")
    p.add_argument(
        "--runtimes",
        default="",
        help="pemn-serve runtimes also measured beside the default, comma-separated "
        "(torch, onnx, auto), each as a pemn-<runtime> column",
    )
    p.add_argument(
        "--compare",
        default="",
        help="git revisions whose pemn-serve also runs (before/after), comma-separated",
    )
    p.add_argument("--no-write", action="store_true", help="print only")
    args = p.parse_args()
    levels = [int(c) for c in args.concurrency.split(",")]

    with tempfile.TemporaryDirectory(prefix="pemn-bench-") as tmp:
        root = Path(tmp)
        (root / "store").mkdir()
        (root / "dense").mkdir()
        data = task_bundle(0)
        write_dense_model(root / "dense", NAME, data)
        x = images(8)
        inputs = inputs_file(x[:1], root)

        servers = {"baseline": BaselineServer(root / "dense", args.threads, [NAME])}
        try:
            servers["pemn"] = pemn_server(
                root / "store", args.threads, runtime="torch", preload=NAME
            )
            upload(servers["pemn"], NAME, data)
            for rev in filter(None, args.compare.split(",")):
                name = f"pemn@{rev}"
                servers[name] = pemn_server(
                    root / f"store-{rev}", args.threads, code=checkout(rev), preload=NAME
                )
                upload(servers[name], NAME, data)
            extra = [r for r in args.runtimes.split(",") if r]
            if not args.no_onnx and "onnx" not in extra:
                extra.append("onnx")
            for rt in extra:
                servers[f"pemn-{rt}"] = pemn_server(
                    root / f"store-{rt}", args.threads, runtime=rt, preload=NAME
                )
                upload(servers[f"pemn-{rt}"], NAME, data)
            ref = _logits(servers["baseline"].client, x)
            for name, s in servers.items():
                got = _logits(s.client, x)  # also warms the task up
                if name == "pemn-auto":  # until the hot task runs on its ONNX session
                    _until_onnx(s, x)
                err = float(np.abs(got - ref).max())
                print(f"{name}: max |logits - baseline| = {err:.2e}", flush=True)
                if err > 1e-4:
                    raise SystemExit(f"{name} does not compute the baseline's network")

            runs: dict[tuple[str, int], list[Load]] = {}
            loads: list[str] = []
            batch: dict[tuple[str, int], list[float]] = {}
            per_item: dict[tuple[str, int], list[float]] = {}
            for r in range(args.rounds):
                for c in levels:
                    order = list(servers) if r % 2 == 0 else list(reversed(servers))
                    for name in order:
                        s = servers[name]
                        before = _batch_stats(s)
                        res = run_load(
                            s.url,
                            [NAME],
                            inputs,
                            concurrency=c,
                            duration=args.duration,
                            warmup=args.warmup,
                        )
                        after = _batch_stats(s)
                        if before is not None and after is not None and after[1] > before[1]:
                            items = after[0] - before[0]
                            batch.setdefault((name, c), []).append(items / (after[1] - before[1]))
                            per_item.setdefault((name, c), []).append(
                                1000 * (after[2] - before[2]) / items
                            )
                        runs.setdefault((name, c), []).append(res)
                        loads.append(load_average())
                        print(
                            f"round {r} c={c:3d} {name:10s} {res.throughput:7.1f} req/s "
                            f"p50 {res.p50:6.1f} ms p99 {res.p99:6.1f} ms  load {loads[-1]}",
                            flush=True,
                        )
        finally:
            for s in servers.values():
                s.stop()

    rows = []
    med = {key: Load.median_of(v) for key, v in runs.items()}
    for c in levels:
        base = med[("baseline", c)]
        for n in servers:
            m = med[(n, c)]
            rows.append(
                [
                    c,
                    n,
                    f"{m.throughput:.0f}",
                    "-" if n == "baseline" else f"**{m.throughput / base.throughput:.2f}x**",
                    f"{m.p50:.1f}",
                    f"{m.p99:.1f}",
                    f"{statistics.median(batch[(n, c)]):.1f}" if (n, c) in batch else "-",
                    f"{statistics.median(per_item[(n, c)]):.2f}" if (n, c) in per_item else "-",
                ]
            )
    header = [
        "concurrency",
        "server",
        "req/s",
        "vs baseline",
        "p50 ms",
        "p99 ms",
        "mean batch",
        "server compute ms/item",
    ]
    goals = []
    for c in levels:
        b, m = med[("baseline", c)], med[("pemn", c)]
        ratio = m.throughput / b.throughput
        if c == 1:
            ok = ratio >= 0.95 and m.p50 <= 1.05 * b.p50
            goals.append(
                f"- concurrency 1, no worse than the baseline (throughput >= 0.95x and p50 "
                f"<= 1.05x, the tolerance of this noisy machine): {ratio:.2f}x, p50 "
                f"{m.p50:.1f} vs {b.p50:.1f} ms: **{'met' if ok else 'missed'}**"
            )
        else:
            goals.append(
                f"- concurrency {c}, >= 2x the baseline's throughput: {ratio:.2f}x: "
                f"**{'met' if ratio >= 2 else 'missed'}**"
            )
    goal_text = "\n".join(goals)

    def vs_base(name: str, c: int) -> str:
        if (name, c) not in med:
            return "-"
        return f"{med[(name, c)].throughput / med[('baseline', c)].throughput:.2f}x"

    ratios = "\n".join(
        f"- {name}: " + ", ".join(f"{vs_base(name, c)} at {c}" for c in levels)
        for name in servers
        if name != "baseline"
    )
    busy = ", ".join(
        f"{statistics.median(per_item[('pemn', c)]) * med[('pemn', c)].throughput / 1000:.2f} s at {c}"
        for c in levels
        if ("pemn", c) in per_item
    )
    errors = sum(r.errors for v in runs.values() for r in v)
    body = f"""
Model: {MODEL}. One image per request as nested JSON lists (`x.tolist()`), top-5
answer. Servers: `baseline` (`bench/baseline_server.py`: the same network loaded
from a dense safetensors checkpoint, run per request in a plain `def` endpoint, i.e.
FastAPI's threadpool); `pemn` (pemn-serve, this tree, torch runtime);
{"".join(f"`{n}` (pemn-serve as of that revision); " for n in servers if "@" in n)}{"`pemn-onnx` (this tree with `PEMN_RUNTIME=onnx`); " if "pemn-onnx" in servers else ""}all at once on loopback,
torch (and ONNX Runtime) pinned to {args.threads} intra-op thread(s) in each, outputs
checked equal (|diff| <= 1e-4) before measuring. Load: `bench/_loadgen.py` in its own
process, closed-loop workers on keep-alive connections, {args.warmup:g} s warm-up
then {args.duration:g} s measured; servers alternate, {args.rounds} rounds, medians
over rounds. Mean batch and compute per item come from the server's own metrics.
Errors (non-200): {errors}. Load average (1/5/15 min) during the runs: from
{loads[0]} to {loads[-1]}.

{table(header, rows)}

Goals (pemn-serve with its torch runtime vs the baseline; on the CPU the default runtime is auto, column `pemn-auto` when measured):
{goal_text}

Throughput vs the baseline, by concurrency:
{ratios}

Seconds of inference per second in pemn-serve (server compute per item x throughput):
{busy or "-"}.
"""
    print(body)
    if not args.no_write:
        suffix = "" if args.threads == 1 else f"_threads{args.threads}"
        write_section(
            f"serving{suffix}",
            "Serving: pemn-serve vs a plain FastAPI + PyTorch server"
            + ("" if args.threads == 1 else f" ({args.threads} torch threads)"),
            body,
            "python -m bench.bench_serving " + " ".join(sys.argv[1:]),
        )


def _batch_stats(server: object) -> tuple[float, float, float] | None:
    metric = getattr(server, "metric", None)
    if metric is None:
        return None
    return (
        metric("pemn_batch_size_sum"),
        metric("pemn_batch_size_count"),
        metric("pemn_batch_compute_seconds_sum"),
    )


if __name__ == "__main__":
    main()
