"""Memory: bytes resident per additional task on pemn-serve vs one dense copy of the
network, in the same run.

Three servers, torch pinned to ``--threads`` thread(s):
- pemn-serve, tasks materialized: after 1, 10, 100 and 1000 tasks have each served a
  request, ``/status`` (``task_bytes``, ``backbone_bytes``, ``packed_bytes``) and
  the process RSS;
- pemn-serve, tasks packed only (``PEMN_CACHE_BYTES=1``: no materialized tier,
  every task stays resident as its packed masks and norm state, 1 bit per weight,
  and is expanded into the batch's buffers when its batch runs);
- the baseline server (``bench/baseline_server.py``) holding as many dense networks
  (loaded lazily from dense checkpoints), RSS.
Per additional task = (value at the last step - value at the first) / their distance.

Run: python -m bench.bench_memory [--tasks 1,10,100,1000]
"""

from __future__ import annotations

import argparse
import gc
import json
import sys
import tempfile
import time
from pathlib import Path

from bench._report import table, write_section
from bench._serving import (
    MODEL,
    BaselineServer,
    TimedClient,
    images,
    load_average,
    pemn_server,
    rss,
    task_bundle,
    upload,
    write_dense_model,
)
from pemn.bundle import read_bundle
from pemn.materialize import materialize


def _settle(pid: int) -> int:
    """RSS after the server has been idle a moment (median of three reads)."""
    time.sleep(0.5)
    reads = []
    for _ in range(3):
        reads.append(rss(pid))
        time.sleep(0.1)
    return sorted(reads)[1]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--tasks", default="1,10,100,1000", help="task counts measured")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--no-write", action="store_true", help="print only")
    args = p.parse_args()
    steps = [int(n) for n in args.tasks.split(",")]
    total = steps[-1]
    names = [f"task-{i:04d}" for i in range(total)]
    body_of = {n: json.dumps({"model": n, "inputs": images(1).tolist()}) for n in names}
    module = materialize(read_bundle(task_bundle(0)))
    dense_params = sum(t.numel() * t.element_size() for t in module.parameters())
    dense_state = sum(t.numel() * t.element_size() for t in module.state_dict().values())
    del module
    gc.collect()
    loads = [load_average()]

    rows: dict[int, dict[str, int]] = {n: {} for n in steps}
    with tempfile.TemporaryDirectory(prefix="pemn-bench-") as tmp:
        root = Path(tmp)
        (root / "dense").mkdir()
        checkpoint = 0
        for i, n in enumerate(names):
            checkpoint = write_dense_model(root / "dense", n, task_bundle(i))
        servers = {
            "materialized": pemn_server(root / "store-a", args.threads),
            "packed": pemn_server(root / "store-b", args.threads, cache_bytes="1"),
        }
        baseline = BaselineServer(root / "dense", args.threads)
        try:
            for s in servers.values():
                for i, n in enumerate(names):
                    upload(s, n, task_bundle(i))
            clients = {k: TimedClient(s.url) for k, s in servers.items()}
            clients["baseline"] = TimedClient(baseline.url)
            done = 0
            for step in steps:
                for n in names[done:step]:
                    for c in clients.values():
                        assert c.post("/predict", body_of[n])[1] == 200
                done = step
                for kind, s in servers.items():
                    st = s.client.get("/status").json()
                    rows[step] |= {
                        f"{kind} rss": _settle(s.proc.pid),
                        f"{kind} task": st["task_bytes"],
                        f"{kind} backbone": st["backbone_bytes"],
                        f"{kind} packed": st["packed_bytes"],
                        f"{kind} tasks": st["tasks"],
                    }
                rows[step]["baseline rss"] = _settle(baseline.proc.pid)
                print(step, rows[step], flush=True)
            loads.append(load_average())
        finally:
            baseline.stop()
            for s in servers.values():
                s.stop()

    def mb(v: float) -> str:
        return f"{v / 1e6:.2f}"

    table1 = table(
        [
            "tasks",
            "materialized: task_bytes MB",
            "backbone_bytes MB",
            "packed_bytes MB",
            "RSS MB",
            "packed only: tasks materialized",
            "packed_bytes MB",
            "RSS MB",
            "baseline (dense): RSS MB",
        ],
        [
            [
                n,
                mb(r["materialized task"]),
                mb(r["materialized backbone"]),
                mb(r["materialized packed"]),
                mb(r["materialized rss"]),
                r["packed tasks"],
                mb(r["packed packed"]),
                mb(r["packed rss"]),
                mb(r["baseline rss"]),
            ]
            for n, r in rows.items()
        ],
    )
    first, last = rows[steps[0]], rows[steps[-1]]
    span = steps[-1] - steps[0]

    def per(key: str) -> float:
        return (last[key] - first[key]) / span

    def kb(v: float) -> str:
        return f"{v / 1e3:,.0f} kB"

    def vs(v: float) -> str:
        return f"{v / dense_state:.3f}x"

    mat_acc = per("materialized task") + per("materialized packed")
    pk_acc = per("packed packed") + per("packed task")
    table2 = table(
        [
            "per additional task",
            "accounted (/status)",
            "vs dense copy",
            "RSS growth",
            "vs dense copy",
        ],
        [
            [
                "pemn-serve, materialized (torch)",
                kb(mat_acc),
                vs(mat_acc),
                kb(per("materialized rss")),
                vs(per("materialized rss")),
            ],
            [
                "pemn-serve, packed only",
                kb(pk_acc),
                vs(pk_acc),
                kb(per("packed rss")),
                vs(per("packed rss")),
            ],
            [
                "baseline, one more dense network",
                "-",
                "-",
                kb(per("baseline rss")),
                vs(per("baseline rss")),
            ],
        ],
    )
    body = f"""
Model: {MODEL}. One dense copy of the network: {dense_state:,} bytes of fp32 state
({dense_params:,} of parameters; the dense safetensors checkpoint is {checkpoint:,} bytes);
one task bundle: {len(task_bundle(1)):,} bytes. All tasks share one backbone
(fixed weights {last["materialized backbone"]:,} bytes, resident once). Accounted bytes
come from `/status` (task_bytes + packed_bytes); RSS is the process's resident set
(VmRSS, median of three reads after each step), which also holds the allocator's slack,
so small steps are noisy; the slope over {span} tasks is what counts. Torch pinned to
{args.threads} thread(s). Load average (1/5/15 min): from {loads[0]} to {loads[-1]}.

{table1}

Per additional task (slope from {steps[0]} to {steps[-1]} tasks):

{table2}
"""
    print(body)
    if not args.no_write:
        write_section(
            "memory",
            "Memory: bytes resident per additional task vs a dense copy",
            body,
            "python -m bench.bench_memory " + " ".join(sys.argv[1:]),
        )


if __name__ == "__main__":
    main()
