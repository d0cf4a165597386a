"""Session-wide services for the tests: a private Redis and an S3 server on loopback.

* ``redis_server``: URL of a private ``redis-server`` started for the session (free
  port, no persistence). Without the binary, the machine's 127.0.0.1:6379 is used
  if it answers; otherwise the tests that need Redis fail with a clear message.
* ``s3_server``: an ``S3Endpoint`` (endpoint URL, bucket, credentials) of moto's S3
  server started for the session, with one bucket created.

The servers themselves are ``pemn.testing``'s (shared with the benchmarks).

Tests isolate themselves by key prefix (a fresh uuid each), never by flushing.
Servers are started only when a test asks for them, and stopped at the end.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator

import pytest
import torch

from pemn.testing import MotoServer, RedisServer, S3Endpoint, ServerError, redis_answers

# Tests run beside other CPU-heavy jobs on a 2-core machine; OpenMP threads that
# outnumber the free cores spin and slow everything down. PEMN_TEST_THREADS overrides.
torch.set_num_threads(int(os.environ.get("PEMN_TEST_THREADS", "1")))


@pytest.fixture(scope="session")
def redis_server() -> Iterator[str]:
    """URL (``redis://127.0.0.1:<port>/0``) of a Redis server for the session."""
    if shutil.which("redis-server") is None:
        if redis_answers("127.0.0.1", 6379):
            yield "redis://127.0.0.1:6379/0"
            return
        pytest.fail(
            "no redis-server binary and nothing answers on 127.0.0.1:6379: "
            "install redis-server (apt-get install redis-server)"
        )
    try:
        server = RedisServer()
    except ServerError as exc:
        pytest.fail(f"could not start redis-server: {exc}")
    try:
        yield server.url
    finally:
        server.close()


@pytest.fixture(scope="session")
def s3_server() -> Iterator[S3Endpoint]:
    """moto's S3 server on loopback with bucket ``pemn-test``."""
    try:
        server = MotoServer()
    except ServerError as exc:
        pytest.fail(f"could not start moto's S3 server: {exc}")
    try:
        bucket = server.bucket("pemn-test")
        yield S3Endpoint(server.endpoint_url, bucket, dict(server.credentials))
    finally:
        server.close()
