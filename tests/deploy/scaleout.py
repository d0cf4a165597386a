"""Several service replicas on loopback over one Redis store, as Kubernetes runs them:
the scale-out test and ``bench/bench_scaleout.py`` share this.

``Cluster(redis_url, hints=[...])`` starts one ``python -m service`` process per
entry (``True``: follows the store's pub/sub hints and polls; ``False``: polling only,
``PEMN_STORE_HINTS=false``, i.e. every pub/sub message lost) under a fresh key prefix,
all with the same API key. ``converge`` measures how long each replica takes to list
a given content id for a name.
"""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Sequence
from typing import Any

from tests.service.server import ServerProcess

__all__ = ["API_KEY", "Cluster", "ConvergenceTimeout"]

API_KEY = "scale-out-key-0123456789"


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
                    "PEMN_API_KEY": API_KEY,
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
        r = self.replicas[index].client.post(
            "/models",
            params={"name": name},
            content=data,
            headers={"content-type": "application/octet-stream", "X-API-Key": API_KEY},
        )
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
