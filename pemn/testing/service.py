"""The real server as a subprocess on loopback (``python -m service --port P``), and
several replicas of it over one Redis store, as Kubernetes runs them.

Only processes and HTTP: nothing here imports the service or the web framework.

``ServerProcess(env)`` starts one server with its own ``PEMN_*`` environment and
waits until it is ready. ``Cluster(redis_url, hints=[...])`` starts one process per
entry (``True``: follows the store's pub/sub hints and polls; ``False``: polling only,
``PEMN_STORE_HINTS=false``, i.e. every pub/sub message lost) under a fresh key prefix,
all with the same API key; ``converge`` measures how long each replica takes to list
a given content id for a name.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import httpx

from pemn.testing.servers import free_port

__all__ = ["CLUSTER_API_KEY", "Cluster", "ConvergenceTimeout", "HttpProcess", "ServerProcess"]

# the directory holding the packages pemn and service (a checkout or site-packages)
ROOT = Path(__file__).resolve().parents[2]
CLUSTER_API_KEY = "scale-out-key-0123456789"
# more than any test runs at once (the widest burst is 50 threads)
CLIENT_CONNECTIONS = 128


class HttpProcess:
    """A process answering HTTP on loopback port ``port``, its output in a log file;
    ready once ``GET ready_path`` answers 200. ``stop()`` ends it. ``preexec_fn`` runs
    in the child before it starts (e.g. to lower its resource limits)."""

    def __init__(
        self,
        argv: list[str],
        env: dict[str, str],
        *,
        port: int,
        ready_path: str,
        cwd: str | Path | None = None,
        wait: bool = True,
        timeout: float = 90.0,
        client_timeout: float = 30.0,
        preexec_fn: Callable[[], None] | None = None,
    ) -> None:
        self.port = port
        self.url = f"http://127.0.0.1:{port}"
        self.ready_path = ready_path
        self._dir = tempfile.TemporaryDirectory(prefix="pemn-server-")
        self.log_path = Path(self._dir.name) / "server.log"
        self._log = self.log_path.open("wb")
        self.proc = subprocess.Popen(
            argv,
            env=env,
            cwd=self._dir.name if cwd is None else cwd,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            preexec_fn=preexec_fn,
        )
        # Tests share this client across up to ~50 threads. httpcore 1.0.9's pool can
        # close a keep-alive connection it has already handed to a waiting thread when
        # idle connections outnumber max_keepalive_connections (default 20): the thread
        # then reads a closed socket ("Bad file descriptor"; encode/httpcore#1110).
        # Keeping every connection alive up to the connection limit never takes that path.
        self.client = httpx.Client(
            base_url=self.url,
            timeout=client_timeout,
            limits=httpx.Limits(
                max_connections=CLIENT_CONNECTIONS, max_keepalive_connections=CLIENT_CONNECTIONS
            ),
        )
        if wait:
            self.wait_ready(timeout)

    def log(self) -> str:
        self._log.flush()
        return self.log_path.read_text(errors="replace")

    def wait_ready(self, timeout: float = 90.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(
                    f"server exited with {self.proc.returncode}:\n{self.log()[-4000:]}"
                )
            try:
                if self.client.get(self.ready_path).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            time.sleep(0.1)
        self.stop()
        raise RuntimeError(f"server not ready after {timeout}s:\n{self.log()[-4000:]}")

    def stop(self) -> None:
        self.client.close()
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._log.close()
        self._dir.cleanup()


class ServerProcess(HttpProcess):
    """``python -m service`` with its own ``PEMN_*`` environment (the caller's
    ``PEMN_*`` variables are dropped): logging at info, one inference thread and the
    torch runtime unless ``env`` says otherwise (the service's default on the CPU is
    ``auto``, which builds ONNX sessions in the background for busy tasks: tests and
    benchmarks that want it ask for it)."""

    def __init__(self, env: dict[str, str], *, wait: bool = True, timeout: float = 90.0) -> None:
        port = free_port()
        full = {k: v for k, v in os.environ.items() if not k.startswith("PEMN_")}
        full.update(
            {
                "PEMN_LOG_LEVEL": "info",
                "PEMN_INFERENCE_THREADS": "1",
                "PEMN_RUNTIME": "torch",
                "PYTHONPATH": str(ROOT),
                **env,
            }
        )
        argv = [sys.executable, "-m", "service", "--port", str(port), "--host", "127.0.0.1"]
        super().__init__(
            argv, full, port=port, ready_path="/v2/health/ready", wait=wait, timeout=timeout
        )

    def upload(
        self, name: str, data: bytes, api_key: str | None = None, **headers: str
    ) -> httpx.Response:
        """``POST /models?name=NAME`` with the bundle bytes as the raw body."""
        auth = {"X-API-Key": api_key} if api_key else {}
        return self.client.post(
            "/models",
            params={"name": name},
            content=data,
            headers={"content-type": "application/octet-stream", **auth, **headers},
        )

    def metric(self, name: str, **labels: str) -> float:
        """Sum of a Prometheus sample whose labels include ``labels``."""
        total = 0.0
        for line in self.client.get("/metrics").text.splitlines():
            if not line.startswith(name + "{") and not line.startswith(name + " "):
                continue
            head, _, value = line.rpartition(" ")
            if all(f'{k}="{v}"' in head for k, v in labels.items()):
                total += float(value)
        return total


class ConvergenceTimeout(AssertionError):
    """A replica did not list the expected content within the deadline."""


class Cluster:
    """Replicas over one Redis store prefix; ``close()`` stops them."""

    def __init__(
        self,
        redis_url: str,
        hints: Sequence[bool],
        *,
        poll_interval_s: float = 2.0,
        timeout: float = 180.0,
    ) -> None:
        self.store_url = f"{redis_url}?prefix=scale-{uuid.uuid4().hex[:10]}"
        self.hints = list(hints)
        self.poll_interval_s = poll_interval_s
        self.replicas: list[ServerProcess] = []
        try:
            for h in self.hints:  # start together, then wait: they boot in parallel
                env = {
                    "PEMN_STORE_URL": self.store_url,
                    "PEMN_API_KEY": CLUSTER_API_KEY,
                    "PEMN_POLL_INTERVAL_S": str(poll_interval_s),
                    "PEMN_STORE_HINTS": "true" if h else "false",
                    "PEMN_LOG_LEVEL": "warning",
                }
                self.replicas.append(ServerProcess(env, wait=False))
            for r in self.replicas:
                r.wait_ready(timeout)
        except BaseException:
            self.close()
            raise

    def upload(self, index: int, name: str, data: bytes) -> dict[str, Any]:
        """``POST /models?name=`` through replica ``index``; the 201/200 body."""
        r = self.replicas[index].upload(name, data, CLUSTER_API_KEY)
        if r.status_code not in (200, 201):
            raise AssertionError(f"upload through replica {index}: {r.status_code} {r.text}")
        return dict(r.json())

    def listed(self, index: int, name: str) -> str | None:
        """The content id replica ``index`` lists for ``name`` (None: not listed)."""
        for m in self.replicas[index].client.get("/models").json()["data"]:
            if m["name"] == name:
                return str(m["content_id"])
        return None

    def converge(
        self,
        indices: Sequence[int],
        name: str,
        content_id: str | None,
        *,
        since: float,
        timeout: float = 30.0,
    ) -> dict[int, float]:
        """Seconds from ``since`` (a ``time.perf_counter()`` value) until each replica
        lists ``content_id`` for ``name`` (None: no longer lists it). Each replica is
        polled by its own thread: every 2 ms for the first 0.2 s, then every 10 ms."""
        out: dict[int, float] = {}
        errors: list[BaseException] = []

        def watch(i: int) -> None:
            # the replica's own client, connected already (a new httpx.Client costs tens
            # of milliseconds, which would swamp the figures); one thread per replica
            client = self.replicas[i].client
            while True:
                models = client.get("/models").json()["data"]
                now = time.perf_counter()
                got = next((m["content_id"] for m in models if m["name"] == name), None)
                if got == content_id:
                    out[i] = now - since
                    return
                if now - since > timeout:
                    raise ConvergenceTimeout(
                        f"replica {i} (hints={self.hints[i]}) lists {got} for {name}, "
                        f"not {content_id}, after {timeout}s"
                    )
                time.sleep(0.002 if now - since < 0.2 else 0.01)

        def run(i: int) -> None:
            try:
                watch(i)
            except BaseException as exc:
                errors.append(exc)

        threads = [threading.Thread(target=run, args=(i,)) for i in indices]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        if errors:
            raise errors[0]
        return out

    def close(self) -> None:
        for r in self.replicas:
            r.stop()
        self.replicas = []

    def __enter__(self) -> Cluster:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
