"""Private Redis and S3 (moto) servers on loopback, for the tests and the benchmarks.

    python -m pemn.testing.servers redis|s3    a throw-away server; prints its URL

``RedisServer`` runs ``redis-server`` on a free port with no persistence and can be
stopped and restarted on the same port (the fault tests do that). ``MotoServer``
runs moto's S3 server on a free port. Both wait until the server answers and raise
``ServerError`` with the server's own output when it does not.

moto's stock server (``python -m moto.server``) handles requests in threads and
checks S3 conditional writes (``If-None-Match`` / ``If-Match``) without a lock, so
two racing conditional PUTs can both succeed there, unlike on S3. The stores rely
on those being atomic, so by default ``MotoServer`` serves one request at a time
(``threaded=False``), which makes them atomic as on S3.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import ClassVar, Self

__all__ = ["MotoServer", "RedisServer", "S3Endpoint", "ServerError", "free_port", "redis_answers"]

_MOTO = """
import sys
from werkzeug.serving import run_simple
from moto.moto_server.werkzeug_app import (
    DomainDispatcherApplication, MotoRequestHandler, create_backend_app)
host, port, threaded = sys.argv[1], int(sys.argv[2]), sys.argv[3] == "1"
app = DomainDispatcherApplication(create_backend_app)
run_simple(host, port, app, threaded=threaded, request_handler=MotoRequestHandler)
"""


class ServerError(RuntimeError):
    """A test server could not be started (the message says why and how to fix it)."""


def free_port() -> int:
    """A TCP port on 127.0.0.1 that is free right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def redis_answers(host: str = "127.0.0.1", port: int = 6379, timeout: float = 0.5) -> bool:
    """True if a Redis server answers PING at host:port."""
    try:
        with socket.create_connection((host, port), timeout=timeout) as s:
            s.sendall(b"PING\r\n")
            return s.recv(64).startswith(b"+PONG")
    except OSError:
        return False


def _tail(path: Path) -> str:
    try:
        return path.read_text(errors="replace")[-2000:]
    except OSError:
        return ""


class _Process:
    """A server subprocess with its output in a log file."""

    what = "server"

    def __init__(self) -> None:
        self.dir = Path(tempfile.mkdtemp(prefix=f"pemn-{self.what}-"))
        self.log = self.dir / "server.log"
        self.proc: subprocess.Popen[bytes] | None = None

    def _spawn(self, argv: list[str]) -> None:
        with open(self.log, "ab") as log:
            self.proc = subprocess.Popen(
                argv, stdout=log, stderr=subprocess.STDOUT, cwd=self.dir, start_new_session=True
            )

    def _ready(self) -> bool:
        raise NotImplementedError

    def _wait(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc is not None and self.proc.poll() is not None:
                raise ServerError(
                    f"{self.what} exited with code {self.proc.returncode}:\n{_tail(self.log)}"
                )
            if self._ready():
                return
            time.sleep(0.05)
        self.stop()
        raise ServerError(f"{self.what} did not answer within {timeout}s:\n{_tail(self.log)}")

    def pause(self) -> None:
        """Freeze the server (SIGSTOP): connections stay open, nothing answers."""
        assert self.proc is not None
        self.proc.send_signal(signal.SIGSTOP)

    def resume(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGCONT)

    def stop(self) -> None:
        """Stop the server (SIGTERM, then SIGKILL after 5 s)."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGCONT)  # a paused server cannot handle SIGTERM
            self.proc.terminate()
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        self.proc = None

    def close(self) -> None:
        self.stop()
        shutil.rmtree(self.dir, ignore_errors=True)

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class RedisServer(_Process):
    """``redis-server --port <free> --bind 127.0.0.1 --save '' --appendonly no``.

    With ``persist=True`` it keeps an append-only file fsynced on every write
    instead, so that ``stop()`` then ``start()`` finds the same data."""

    what = "redis-server"

    def __init__(
        self, port: int | None = None, *, persist: bool = False, timeout: float = 10.0
    ) -> None:
        binary = shutil.which("redis-server")
        if binary is None:
            raise ServerError(
                "redis-server is not installed (apt-get install redis-server); the tests "
                "need a private Redis they can stop and restart"
            )
        self.binary = binary
        self.port = port or free_port()
        self.persist = persist
        self.timeout = timeout
        super().__init__()
        self.start()

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def _ready(self) -> bool:
        return redis_answers("127.0.0.1", self.port, timeout=0.2)

    def start(self) -> None:
        """(Re)start on the same port (empty unless ``persist``)."""
        if self.proc is not None and self.proc.poll() is None:
            return
        argv = [self.binary, "--port", str(self.port), "--bind", "127.0.0.1"]
        argv += ["--save", "", "--dir", str(self.dir)]
        if self.persist:
            argv += ["--appendonly", "yes", "--appendfsync", "always"]
        else:
            argv += ["--appendonly", "no"]
        argv += ["--protected-mode", "yes", "--loglevel", "warning"]
        self._spawn(argv)
        self._wait(self.timeout)


class MotoServer(_Process):
    """moto's S3 server on a free port; ``bucket(name)`` creates a bucket."""

    what = "moto S3 server"

    def __init__(
        self, port: int | None = None, *, threaded: bool = False, timeout: float = 30.0
    ) -> None:
        self.port = port or free_port()
        super().__init__()
        env_threaded = "1" if threaded else "0"
        self._spawn(
            [sys.executable, "-c", _MOTO, "127.0.0.1", str(self.port), env_threaded],
        )
        self._wait(timeout)

    @property
    def endpoint_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    credentials: ClassVar[dict[str, str]] = {
        "aws_access_key_id": "testing",
        "aws_secret_access_key": "testing",
    }

    def _ready(self) -> bool:
        try:
            with urllib.request.urlopen(self.endpoint_url + "/moto-api/", timeout=0.5) as r:
                return bool(r.status == 200)
        except (OSError, urllib.error.URLError):
            return False

    def bucket(self, name: str) -> str:
        """Create bucket ``name`` (if absent) and return its name."""
        import boto3

        client = boto3.client(
            "s3", region_name="us-east-1", endpoint_url=self.endpoint_url, **self.credentials
        )
        try:
            with contextlib.suppress(client.exceptions.BucketAlreadyOwnedByYou):
                client.create_bucket(Bucket=name)
        finally:
            client.close()
        return name


@dataclass(frozen=True)
class S3Endpoint:
    """An S3 server's endpoint URL, a bucket on it and the credentials to use."""

    endpoint_url: str
    bucket: str
    credentials: dict[str, str] = field(default_factory=dict)

    def url(self, prefix: str | None = None) -> str:
        """A store URL under a fresh (or the given) key prefix."""
        prefix = prefix or f"t-{uuid.uuid4().hex[:12]}"
        return f"s3://{self.bucket}/{prefix}?endpoint_url={self.endpoint_url}"


def main() -> None:  # pragma: no cover - manual use: python -m pemn.testing.servers redis|s3
    what = sys.argv[1] if len(sys.argv) > 1 else "redis"
    server: _Process = RedisServer() if what == "redis" else MotoServer(threaded=True)
    print(getattr(server, "url", None) or getattr(server, "endpoint_url", ""), flush=True)
    try:
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        server.close()


if __name__ == "__main__":  # pragma: no cover
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    main()
