"""ONNX Runtime vs PyTorch runtime: latency of one request at batch 1 and 32 on two
pemn-serve processes (``PEMN_RUNTIME=torch`` / ``onnx``), and the runners' own
time in-process, so the HTTP and decoding overhead is visible separately.

Requests are sent one at a time (concurrency 1), alternating between the servers;
batch 32 is sent both as nested JSON lists and as a base64 ``.npy`` (what the
decoding costs). In-process: the torch network vs the ONNX session of the same task,
interleaved. Both runtimes are pinned to ``--threads`` intra-op threads.

Run: python -m bench.bench_runtimes [--threads 1] [--requests 200]
"""

from __future__ import annotations

import argparse
import base64
import io
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from bench._report import table, write_section
from bench._serving import (
    MODEL,
    TimedClient,
    images,
    load_average,
    pemn_server,
    task_bundle,
    upload,
)
from pemn.bundle import read_bundle
from pemn.materialize import Backbone
from pemn.testing import ServerProcess
from service.runtimes import OnnxRunner

NAME = "fashion"


def _npy_b64(x: np.ndarray) -> str:
    buf = io.BytesIO()
    np.save(buf, x)
    return base64.b64encode(buf.getvalue()).decode()


def _compute(s: ServerProcess) -> tuple[float, float]:
    return s.metric("pemn_batch_compute_seconds_sum"), s.metric("pemn_batch_compute_seconds_count")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--requests", type=int, default=200, help="timed requests per cell (batch 1)")
    p.add_argument("--no-write", action="store_true", help="print only")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    data = task_bundle(0)
    x = images(32)
    cases = {
        ("1", "JSON lists"): json.dumps({"model": NAME, "inputs": x[:1].tolist()}),
        ("32", "JSON lists"): json.dumps({"model": NAME, "inputs": x.tolist()}),
        ("32", "base64 .npy"): json.dumps({"model": NAME, "inputs": _npy_b64(x)}),
    }
    http: dict[tuple[str, str, str], list[float]] = {}
    compute: dict[tuple[str, str, str], float] = {}  # server-side ms per batch
    loads = [load_average()]
    with tempfile.TemporaryDirectory(prefix="pemn-bench-") as tmp:
        servers = {
            rt: pemn_server(Path(tmp) / rt, args.threads, runtime=rt) for rt in ("torch", "onnx")
        }
        try:
            clients = {}
            for rt, s in servers.items():
                upload(s, NAME, data)
                clients[rt] = TimedClient(s.url)
                for body in cases.values():  # loads the task, warms up
                    for _ in range(3):
                        assert clients[rt].post("/predict", body)[1] == 200
            for case, body in cases.items():
                n = args.requests if case[0] == "1" else max(20, args.requests // 4)
                before = {rt: _compute(s) for rt, s in servers.items()}
                for i in range(n):
                    for rt in ("torch", "onnx") if i % 2 == 0 else ("onnx", "torch"):
                        ms, status, out = clients[rt].post("/predict", body)
                        assert status == 200, out[:300]
                        assert json.loads(out)["runtime"] == rt
                        http.setdefault((rt, *case), []).append(ms)
                for rt, s in servers.items():
                    total, count = (a - b for a, b in zip(_compute(s), before[rt], strict=True))
                    compute[(rt, *case)] = 1000 * total / count
            loads.append(load_average())
        finally:
            for s in servers.values():
                s.stop()

    # in-process runners on the same task, interleaved
    bundle = read_bundle(data)
    backbone = Backbone.for_bundle(bundle, channels_last=True)  # as the service does
    packed = backbone.pack(bundle)
    weights = backbone.materialize(packed)
    onnx = OnnxRunner.build(backbone, packed, args.threads)
    runners = {
        "torch": lambda xb: backbone.forward(torch.from_numpy(xb), weights).numpy(),
        "onnx": onnx,
    }
    inproc: dict[tuple[str, str], list[float]] = {}
    for b in ("1", "32"):
        xb = np.ascontiguousarray(x[: int(b)])
        diff = np.abs(runners["torch"](xb) - runners["onnx"](xb)).max()
        assert diff < 1e-4, diff
        for _ in range(3):
            for r in runners.values():
                r(xb)
        n = args.requests if b == "1" else max(20, args.requests // 4)
        for _ in range(n):
            for rt, r in runners.items():
                t = time.perf_counter()
                r(xb)
                inproc.setdefault((rt, b), []).append((time.perf_counter() - t) * 1000)
    loads.append(load_average())

    rows = []
    for batch, enc in cases:
        ht, ho = (statistics.median(http[(r, batch, enc)]) for r in ("torch", "onnx"))
        mt, mo = (statistics.mean(http[(r, batch, enc)]) for r in ("torch", "onnx"))
        ct, co = (compute[(r, batch, enc)] for r in ("torch", "onnx"))
        it, io_ = (statistics.median(inproc[(r, batch)]) for r in ("torch", "onnx"))
        rows.append(
            [
                batch,
                enc,
                f"{ht:.2f} / {ho:.2f}",
                f"**{ht / ho:.2f}x**",
                f"{ct:.2f} / {co:.2f}",
                f"{mt - ct:.2f} / {mo - co:.2f}",
                f"{it:.2f} / {io_:.2f}",
                f"**{it / io_:.2f}x**",
            ]
        )
    header = [
        "batch",
        "request body",
        "HTTP p50 ms torch / onnx",
        "onnx speed-up (HTTP)",
        "server compute ms torch / onnx",
        "rest of the request (mean) ms torch / onnx",
        "in-process runner ms torch / onnx",
        "onnx speed-up (runner)",
    ]
    body = f"""
Model: {MODEL}; one task, two pemn-serve processes (`PEMN_RUNTIME=torch` and
`onnx`), torch and ONNX Runtime pinned to {args.threads} intra-op thread(s).
Requests one at a time, alternating between the servers ({args.requests} per
cell at batch 1, {max(20, args.requests // 4)} at batch 32); medians (HTTP: client
side, `http.client` keep-alive). Server compute: the servers' own
`pemn_batch_compute_seconds` for those requests (mean); "rest of the request" is the
mean HTTP time minus that: transport, JSON decoding, validation, batching hand-offs
and the response. In-process
runner: the backbone's network (`Backbone.forward`) / the task's ONNX session called on the same arrays in this process
afterwards (no HTTP), interleaved. Outputs agree within 1e-4. Load
average (1/5/15 min): from {loads[0]} to {loads[-1]}.

{table(header, rows)}
"""
    print(body)
    if not args.no_write:
        write_section(
            "runtimes",
            "ONNX Runtime vs PyTorch runtime",
            body,
            "python -m bench.bench_runtimes " + " ".join(sys.argv[1:]),
        )


if __name__ == "__main__":
    main()
