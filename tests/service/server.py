"""The real server as a subprocess on loopback: ``python -m service --port P``."""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

from tests.servers import free_port

__all__ = ["ServerProcess"]

ROOT = Path(__file__).resolve().parents[2]


class ServerProcess:
    """A service process with its own PEMN_* environment; ``stop()`` ends it."""

    def __init__(self, env: dict[str, str], *, wait: bool = True, timeout: float = 90.0) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self._dir = tempfile.TemporaryDirectory(prefix="pemn-server-")
        self.log_path = Path(self._dir.name) / "server.log"
        full = {k: v for k, v in os.environ.items() if not k.startswith("PEMN_")}
        full.update(
            {
                "PEMN_LOG_LEVEL": "info",
                "PEMN_INFERENCE_THREADS": "1",
                "PYTHONPATH": str(ROOT),
                **env,
            }
        )
        self._log = self.log_path.open("wb")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "service", "--port", str(self.port), "--host", "127.0.0.1"],
            env=full,
            cwd=self._dir.name,
            stdout=self._log,
            stderr=subprocess.STDOUT,
        )
        self.client = httpx.Client(base_url=self.url, timeout=30.0)
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
                if self.client.get("/v2/health/ready").status_code == 200:
                    return
            except httpx.TransportError:
                pass
            time.sleep(0.1)
        raise RuntimeError(f"server not ready after {timeout}s:\n{self.log()[-4000:]}")

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
