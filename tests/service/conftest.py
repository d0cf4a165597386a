"""Servers for the service tests: real processes over HTTP on loopback, with a real
Redis store (private server, a fresh key prefix per server group)."""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator

import pytest

from pemn.testing import ServerProcess

API_KEY = "test-key-0123456789abcdef"


@pytest.fixture(scope="module")
def redis_store(redis_server: str) -> str:
    """A store URL on the private Redis under a prefix of its own."""
    return f"{redis_server}?prefix=svc-{uuid.uuid4().hex[:10]}"


@pytest.fixture(scope="module")
def start_server() -> Iterator[Callable[..., ServerProcess]]:
    started: list[ServerProcess] = []

    def start(**env: str) -> ServerProcess:
        server = ServerProcess(
            {k if k.startswith("PEMN_") else f"PEMN_{k.upper()}": v for k, v in env.items()}
        )
        started.append(server)
        return server

    yield start
    for s in started:
        s.stop()


@pytest.fixture(scope="module")
def server(start_server: Callable[..., ServerProcess], redis_store: str) -> ServerProcess:
    """The main server of a test module: Redis store, API key, default settings."""
    return start_server(store_url=redis_store, api_key=API_KEY, poll_interval_s="0.5")
