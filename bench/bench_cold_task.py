"""Cold task: latency of the first request to a task whose backbone is resident
(another task on it already served), against loading the same network from a dense
checkpoint, in the same run; p50 and p99 over ``--tasks`` fresh tasks.

- pemn-serve: K fresh tasks are uploaded (not yet loaded); the first request to each
  is timed on the client, with the server's own ``pemn_materialize_seconds`` for it
  (store read, bundle validation, masks -> weights, runner), and a second (warm)
  request to the same task.
- baseline server (``bench/baseline_server.py``): the same K networks as dense
  safetensors checkpoints on disk, loaded lazily on the first request to each.
- in-process, no HTTP: bundle bytes -> task weights over the resident backbone
  (``read_bundle`` + ``Backbone.pack``, which checks the prototype digest, +
  ``Backbone.materialize``) vs safetensors bytes -> dense module (``create_model`` +
  ``load_state_dict``), interleaved.
- with ``--onnx K``: the first request to K fresh tasks on a pemn-serve running the
  ONNX Runtime backend (export, or re-weighting of the backbone's graph, + session).

Run: python -m bench.bench_cold_task [--tasks 50] [--onnx 5] [--compare REV]
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import torch

from bench._report import percentile, table, write_section
from bench._serving import (
    MODEL,
    BaselineServer,
    TimedClient,
    checkout,
    images,
    load_average,
    pemn_server,
    task_bundle,
    upload,
    write_dense_model,
)
from bench.baseline_server import load_dense
from pemn.bundle import read_bundle
from pemn.materialize import Backbone
from pemn.testing import ServerProcess


def _timed_predict(client: TimedClient, name: str, body: str) -> float:
    ms, status, data = client.post("/predict", body)
    if status != 200:
        raise RuntimeError(f"{name}: {status} {data[:300]!r}")
    return ms


def _body(name: str, inputs: str) -> str:
    return f'{{"model": {json.dumps(name)}, "inputs": {inputs}}}'


def _materialize_ms(s: ServerProcess) -> tuple[float, float]:
    """Server-side load time (fetch + validate + pack, then expand or build a
    session) and the number of tasks fetched from the store."""
    seconds = sum(
        s.metric("pemn_materialize_seconds_sum", kind=k) for k in ("packed", "task", "onnx")
    )
    return seconds * 1000, s.metric("pemn_materialize_seconds_count", kind="packed")


def _pemn_cold(
    s: ServerProcess, names: list[str], inputs: str, rows: dict[str, list[float]], tag: str
) -> None:
    """Time the first and a second request to each of ``names`` (uploaded, unloaded)."""
    client = TimedClient(s.url)
    for name in names:
        before = _materialize_ms(s)
        rows.setdefault(f"{tag}: first request", []).append(
            _timed_predict(client, name, _body(name, inputs))
        )
        after = _materialize_ms(s)
        assert after[1] == before[1] + 1, "expected exactly one task load"
        rows.setdefault(f"{tag}: server-side materialize", []).append(after[0] - before[0])
        rows.setdefault(f"{tag}: second request", []).append(
            _timed_predict(client, name, _body(name, inputs))
        )
    client.close()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--tasks", type=int, default=50, help="fresh tasks timed (K)")
    p.add_argument("--onnx", type=int, default=5, help="fresh tasks timed on the ONNX runtime")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--compare", default="", help="git revisions also measured, comma-separated")
    p.add_argument("--no-write", action="store_true", help="print only")
    args = p.parse_args()
    torch.set_num_threads(args.threads)  # the in-process part, as in the servers
    k = args.tasks
    names = [f"task-{i:03d}" for i in range(k + 1)]
    inputs = json.dumps(images(1).tolist())
    rows: dict[str, list[float]] = {}
    notes: list[str] = []
    loads = [load_average()]

    with tempfile.TemporaryDirectory(prefix="pemn-bench-") as tmp:
        root = Path(tmp)
        (root / "dense").mkdir()
        sizes = [write_dense_model(root / "dense", n, task_bundle(i)) for i, n in enumerate(names)]
        bundles = [task_bundle(i) for i in range(k + 1)]
        servers: dict[str, ServerProcess] = {}
        baseline = BaselineServer(root / "dense", args.threads, [names[0]])
        try:
            versions = {"pemn-serve": None} | {
                f"pemn-serve@{rev}": checkout(rev) for rev in filter(None, args.compare.split(","))
            }
            for label, code in versions.items():
                s = servers[label] = pemn_server(root / f"store-{len(servers)}", args.threads, code)
                for name, data in zip(names, bundles, strict=True):
                    upload(s, name, data)
                first = _timed_predict(TimedClient(s.url), names[0], _body(names[0], inputs))
                notes.append(f"{label}: first request on a cold backbone {first:.0f} ms")
            base = TimedClient(baseline.url)
            _timed_predict(base, names[0], _body(names[0], inputs))

            # first requests, alternating servers task by task
            for i, name in enumerate(names[1:]):
                order = [*servers, "baseline"]
                for label in order if i % 2 == 0 else reversed(order):
                    if label == "baseline":
                        rows.setdefault("baseline server: first request (lazy load)", []).append(
                            _timed_predict(base, name, _body(name, inputs))
                        )
                        rows.setdefault("baseline server: second request", []).append(
                            _timed_predict(base, name, _body(name, inputs))
                        )
                    else:
                        _pemn_cold(servers[label], [name], inputs, rows, label)
            loads.append(load_average())
        finally:
            baseline.stop()
            for s in servers.values():
                s.stop()

        # in-process: bytes -> module, interleaved, same K networks
        checkpoints = [(root / "dense" / f"{n}.safetensors").read_bytes() for n in names]
        meta = json.loads((root / "dense" / f"{names[0]}.json").read_text())
        backbone = Backbone.for_bundle(read_bundle(bundles[0]), channels_last=True)
        for i in range(1, k + 1):
            t = time.perf_counter()
            packed = backbone.pack(read_bundle(bundles[i], verify=False))  # as the server does
            backbone.materialize(packed)
            a = time.perf_counter()
            load_dense(checkpoints[i], meta)
            b = time.perf_counter()
            rows.setdefault("in-process: bundle -> task weights (backbone resident)", []).append(
                (a - t) * 1000
            )
            rows.setdefault("in-process: dense checkpoint -> module", []).append((b - a) * 1000)
        loads.append(load_average())

        if args.onnx:
            for label, code in versions.items():
                tag = f"{label} (onnx runtime)"
                s = pemn_server(root / f"store-onnx-{label}", args.threads, code, runtime="onnx")
                try:
                    for name, data in zip(names[: args.onnx + 1], bundles, strict=False):
                        upload(s, name, data)
                    first = _timed_predict(TimedClient(s.url), names[0], _body(names[0], inputs))
                    notes.append(f"{tag}: first request on a cold backbone {first:.0f} ms")
                    _pemn_cold(s, names[1 : args.onnx + 1], inputs, rows, tag)
                finally:
                    s.stop()
            loads.append(load_average())

    note_text = "  \n".join(notes)

    def p50(key: str) -> float:
        return percentile(rows[key], 50)

    ratios = [
        [
            "first request over HTTP (p50)",
            f"{p50('pemn-serve: first request'):.1f}",
            f"{p50('baseline server: first request (lazy load)'):.1f}",
            f"**{p50('pemn-serve: first request') / p50('baseline server: first request (lazy load)'):.2f}x**",
        ],
        [
            "in-process load (p50)",
            f"{p50('in-process: bundle -> task weights (backbone resident)'):.2f}",
            f"{p50('in-process: dense checkpoint -> module'):.2f}",
            f"**{p50('in-process: bundle -> task weights (backbone resident)') / p50('in-process: dense checkpoint -> module'):.2f}x**",
        ],
    ]
    out = []
    for what, ms in rows.items():
        out.append([what, len(ms), f"{percentile(ms, 50):.1f}", f"{percentile(ms, 99):.1f}"])
    body = f"""
Model: {MODEL}. A task bundle is {len(bundles[1]):,} bytes; the same network as a
dense safetensors checkpoint is {sizes[1]:,} bytes. Stores: local directory (pemn-serve),
files on disk (baseline). Torch pinned to {args.threads} thread(s). Every server first
serves task 0 (pemn-serve: that builds the backbone), then the first request to
each fresh task is timed on the client; servers alternate task by task. p99 over n
samples is close to the maximum when n is small. Load average (1/5/15 min): from
{loads[0]} to {loads[-1]}.

{table(["what", "n", "p50 ms", "p99 ms"], out)}

{table(["cold task", "pemn-serve ms", "dense checkpoint ms", "ratio (goal <= 1.0x)"], ratios)}

{note_text}
"""
    print(body)
    if not args.no_write:
        write_section(
            "cold_task",
            "Cold task: first request to a task on a resident backbone vs a dense checkpoint",
            body,
            "python -m bench.bench_cold_task " + " ".join(sys.argv[1:]),
        )


if __name__ == "__main__":
    main()
