"""Fixtures shared by the tests (``tests/``) and the benchmarks (``bench/``): small
valid bundles, small configs of every architecture, private Redis and S3 (moto)
servers on loopback, and the real server as a subprocess (one, or replicas over one
store). Not used by the product.

Needs the ``dev`` extra (httpx, moto) and the ``redis-server`` binary for Redis. It
never imports the service or the web stack: servers are ``python -m service``
processes, spoken to over HTTP.
"""

from pemn.testing.bundles import deterministic_masks, edit_manifest, make_bundle, make_model_state
from pemn.testing.servers import (
    MotoServer,
    RedisServer,
    S3Endpoint,
    ServerError,
    free_port,
    redis_answers,
)
from pemn.testing.service import (
    CLUSTER_API_KEY,
    Cluster,
    ConvergenceTimeout,
    HttpProcess,
    ServerProcess,
)
from pemn.testing.small import ARCHS, SMALL, STRATEGIES, strategy_id

__all__ = [
    "ARCHS",
    "CLUSTER_API_KEY",
    "SMALL",
    "STRATEGIES",
    "Cluster",
    "ConvergenceTimeout",
    "HttpProcess",
    "MotoServer",
    "RedisServer",
    "S3Endpoint",
    "ServerError",
    "ServerProcess",
    "deterministic_masks",
    "edit_manifest",
    "free_port",
    "make_bundle",
    "make_model_state",
    "redis_answers",
    "strategy_id",
]
