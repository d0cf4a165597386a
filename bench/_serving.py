"""Shared by the serving benchmarks: the model, its bundles and dense checkpoints,
the two servers (pemn-serve through ``pemn.testing.ServerProcess``, the baseline of
``bench/baseline_server.py``), the load generator, process RSS and machine load.

The model is a Fashion-MNIST ConvMixer (width 128, depth 4, kernel 5, patch 2, on
1x28x28, 10 classes; 82k weights, 0.33 MB dense fp32) with PEMN strategy rp 1e-2;
task ``i`` is ``make_bundle(..., mask_seed=i)``: same backbone, different masks.
Compute does not depend on the mask contents. Inputs are Fashion-MNIST test images
(pixels / 255) sent as nested JSON lists, as a user would send ``x.tolist()``.
"""

from __future__ import annotations

import functools
import http.client
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import numpy as np
import torch
from safetensors.torch import save as save_safetensors

from pemn.bundle import read_bundle
from pemn.materialize import materialize
from pemn.prototype import Strategy
from pemn.testing import HttpProcess, ServerProcess, free_port, make_bundle

ROOT = Path(__file__).resolve().parents[1]

__all__ = [
    "ARCH",
    "CONFIG",
    "MODEL",
    "STRATEGY",
    "BaselineServer",
    "Load",
    "TimedClient",
    "checkout",
    "dense_checkpoint",
    "images",
    "inputs_file",
    "load_average",
    "pemn_server",
    "rss",
    "run_load",
    "task_bundle",
    "upload",
    "write_dense_model",
]

ARCH = "convmixer"
CONFIG: dict[str, Any] = {
    "in_channels": 1,
    "image_size": 28,
    "num_classes": 10,
    "width": 128,
    "depth": 4,
    "kernel": 5,
    "patch": 2,
}
STRATEGY = Strategy("rp", seed=0, ratio=1e-2)
MODEL = "ConvMixer-128/4 (kernel 5, patch 2) on 1x28x28 Fashion-MNIST, 10 classes, rp 1e-2"
AUTH_KEY = "bench-key-0123456789abcdef"


@functools.cache
def task_bundle(i: int) -> bytes:
    """The bundle of task ``i`` (same backbone for every ``i``)."""
    return make_bundle(ARCH, dict(CONFIG), STRATEGY, mask_seed=i)


def images(n: int) -> np.ndarray:
    """(n, 1, 28, 28) float32 in [0, 1]: Fashion-MNIST test images, or random
    pixels when the data set is not installed (compute does not depend on it)."""
    try:
        from trainer.data import load_fashion_mnist

        x, _ = load_fashion_mnist("test")
        return (x[:n, None].astype(np.float32) / 255.0).copy()
    except (OSError, ValueError):
        rng = np.random.default_rng(0)
        return rng.integers(0, 256, (n, 1, 28, 28)).astype(np.float32) / 255.0


def inputs_file(x: np.ndarray, directory: Path) -> Path:
    """A file holding ``json.dumps(x.tolist())`` (the loadgen's ``--inputs``)."""
    path = directory / f"inputs-{len(x)}.json"
    path.write_text(json.dumps(x.tolist()))
    return path


def dense_checkpoint(data: bytes) -> tuple[bytes, dict[str, Any]]:
    """The materialized network of bundle ``data`` as a normal dense checkpoint:
    safetensors bytes of the architecture's state dict, and the metadata a user
    would keep next to it. Bundles store BatchNorm folded (mean 0, var 1, eps 0);
    here running_var = 1 - eps so the stock BatchNorm (eps 1e-5) computes the same."""
    bundle = read_bundle(data)
    module = materialize(bundle)
    state = {k: v.detach().clone().contiguous() for k, v in module.net.state_dict().items()}  # type: ignore[union-attr]
    for name, mod in module.net.named_modules():  # type: ignore[union-attr]
        if isinstance(mod, torch.nn.BatchNorm2d | torch.nn.BatchNorm1d):
            state[f"{name}.running_var"] = state[f"{name}.running_var"] - 1e-5
    m = bundle.manifest
    meta = {
        "arch": ARCH,
        "config": CONFIG,
        "mean": list(m.input.mean),
        "std": list(m.input.std),
        "labels": list(m.labels),
    }
    return save_safetensors(state), meta


def write_dense_model(directory: Path, name: str, data: bytes) -> int:
    """Write task ``data`` as ``name.safetensors`` + ``name.json``; returns the checkpoint size."""
    checkpoint, meta = dense_checkpoint(data)
    (directory / f"{name}.safetensors").write_bytes(checkpoint)
    (directory / f"{name}.json").write_text(json.dumps(meta))
    return len(checkpoint)


def checkout(rev: str) -> Path:
    """The tree of git revision ``rev`` of this repository, extracted once under
    /tmp, to run an earlier pemn-serve next to this one (before/after in one run)."""
    sha = subprocess.run(
        ["git", "-C", str(ROOT), "rev-parse", "--verify", f"{rev}^{{commit}}"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    path = Path(tempfile.gettempdir()) / f"pemn-serve-{sha[:12]}"
    if not (path / ".complete").exists():
        path.mkdir(exist_ok=True)
        archive = subprocess.run(
            ["git", "-C", str(ROOT), "archive", sha], capture_output=True, check=True
        ).stdout
        subprocess.run(["tar", "-x", "-C", str(path)], input=archive, check=True)
        (path / ".complete").touch()
    return path


def pemn_server(
    store_dir: Path, threads: int, code: Path | None = None, **env: str
) -> ServerProcess:
    """pemn-serve over a local-directory store, torch pinned to ``threads``; the
    service code comes from ``code`` (a ``checkout``) when given, else this tree."""
    full = {
        "PEMN_STORE_URL": f"file://{store_dir}",
        "PEMN_INFERENCE_THREADS": str(threads),
        "PEMN_API_KEY": AUTH_KEY,
        "PEMN_LOG_LEVEL": "warning",
        **{k if k.startswith("PEMN_") else f"PEMN_{k.upper()}": v for k, v in env.items()},
    }
    if code is not None:
        full["PYTHONPATH"] = str(code)
    return ServerProcess(full)


def upload(server: ServerProcess, name: str, data: bytes) -> None:
    """Upload ``data`` as ``name`` to a ``pemn_server``; raises unless it is stored."""
    r = server.upload(name, data, AUTH_KEY)
    if r.status_code not in (200, 201):
        raise RuntimeError(f"upload of {name} failed: {r.status_code} {r.text}")


class BaselineServer(HttpProcess):
    """``python -m bench.baseline_server`` on a free loopback port."""

    def __init__(
        self, models_dir: Path, threads: int, preload: Sequence[str] = (), timeout: float = 60
    ) -> None:
        port = free_port()
        argv = [sys.executable, "-m", "bench.baseline_server", "--port", str(port)]
        argv += ["--models-dir", str(models_dir), "--threads", str(threads)]
        argv += ["--preload", ",".join(preload)]
        env = {**os.environ, "PYTHONPATH": str(ROOT)}
        super().__init__(
            argv, env, port=port, ready_path="/health", cwd=ROOT, timeout=timeout,
            client_timeout=60.0,
        )  # fmt: skip


@dataclass
class Load:
    """One load-generator run (latencies in ms, client side)."""

    requests: int
    errors: int
    throughput: float
    p50: float
    p90: float
    p99: float

    @classmethod
    def median_of(cls, runs: Iterable[Load]) -> Load:
        runs = list(runs)

        def med(field: str) -> float:
            return statistics.median(getattr(r, field) for r in runs)

        return cls(
            sum(r.requests for r in runs),
            sum(r.errors for r in runs),
            med("throughput"),
            med("p50"),
            med("p90"),
            med("p99"),
        )


def run_load(
    url: str,
    models: Sequence[str],
    inputs: Path,
    *,
    concurrency: int,
    duration: float,
    warmup: float,
    extra: dict[str, Any] | None = None,
    content_type: str | None = None,
) -> Load:
    """Run ``bench._loadgen`` in its own process against ``url`` and parse its result.
    With ``content_type``, ``inputs`` is a whole request body sent as is."""
    argv = [sys.executable, "-m", "bench._loadgen", "--url", url, "--models", ",".join(models)]
    if content_type is not None:
        argv += ["--body", str(inputs), "--content-type", content_type]
    else:
        argv += ["--inputs", str(inputs)]
    argv += ["--concurrency", str(concurrency)]
    argv += ["--duration", str(duration), "--warmup", str(warmup)]
    argv += ["--extra", json.dumps(extra or {"top_k": 5})]
    out = subprocess.run(
        argv,
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        capture_output=True,
        text=True,
        check=True,
        timeout=duration + warmup + 120,
    )
    res = json.loads(out.stdout)
    if res["errors"]:
        print(
            f"warning: {res['errors']} errors from {url}: {res['error_samples']}", file=sys.stderr
        )
    if not res["requests"]:
        raise RuntimeError(f"no successful request against {url}: {res['error_samples']}")
    return Load(
        res["requests"], res["errors"], res["throughput"], res["p50"], res["p90"], res["p99"]
    )


class TimedClient:
    """A keep-alive ``http.client`` connection that times single requests (about
    1 ms lighter per request than httpx, which matters next to a 4 ms request)."""

    def __init__(self, url: str) -> None:
        parts = urlsplit(url)
        self.conn = http.client.HTTPConnection(
            parts.hostname or "127.0.0.1", parts.port, timeout=600
        )

    def post(self, path: str, body: str | bytes) -> tuple[float, int, bytes]:
        """(milliseconds, status, body) of one JSON POST (on a new connection when
        the server closed an idle one: uvicorn does after 5 s)."""
        for attempt in (0, 1):
            start = time.perf_counter()
            try:
                self.conn.request(
                    "POST", path, body=body, headers={"content-type": "application/json"}
                )
                response = self.conn.getresponse()
                data = response.read()
            except (BrokenPipeError, ConnectionResetError, http.client.RemoteDisconnected):
                self.conn.close()
                if attempt:
                    raise
                continue
            return (time.perf_counter() - start) * 1000, response.status, data
        raise AssertionError("unreachable")

    def close(self) -> None:
        self.conn.close()


def rss(pid: int) -> int:
    """Resident set size of process ``pid`` in bytes (Linux)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError(f"no VmRSS for pid {pid}")


def load_average() -> str:
    one, five, fifteen = os.getloadavg()
    return f"{one:.2f} / {five:.2f} / {fifteen:.2f}"
