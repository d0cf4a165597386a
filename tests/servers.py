"""Alias of ``pemn.testing.servers`` for the modules that still import it from here
(``tests/store/``, ``bench/bench_store.py``), until they import ``pemn.testing``.

    python -m tests.servers redis|s3    (same as python -m pemn.testing.servers)
"""

from pemn.testing.servers import (
    MotoServer,
    RedisServer,
    S3Endpoint,
    ServerError,
    free_port,
    main,
    redis_answers,
)

__all__ = ["MotoServer", "RedisServer", "S3Endpoint", "ServerError", "free_port", "redis_answers"]

if __name__ == "__main__":  # pragma: no cover
    main()
