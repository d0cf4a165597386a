"""``python -m service``: run the API with uvicorn. Flags override ``PEMN_*`` settings.

uvicorn runs with the connection limits of ``service.connections`` (connection
caps, header size and header deadline; its parser chosen by ``PEMN_HTTP_PARSER``)
and its own keep-alive timeout; ``service.limits`` bounds the bodies. Why these
means and not another server or a proxy: docs/operations.md, "Hostile clients".

Exit codes: 0 after a normal shutdown; ``EXIT_CONFIG`` (78, ``EX_CONFIG`` of
sysexits.h) when the settings are refused, printed as one line per problem with
no traceback (the compose file and the manifests do not restart on it in a loop);
3 when uvicorn's startup fails.
"""

from __future__ import annotations

import argparse
import os
import sys

import uvicorn
from pydantic import ValidationError

from service.connections import ConnectionLimits, guarded_protocol, raise_fd_limit
from service.settings import Settings

__all__ = ["EXIT_CONFIG", "main"]

EXIT_CONFIG = 78


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m service", description="Serve PEMN bundles over HTTP."
    )
    p.add_argument("--host", help="bind address (PEMN_HOST, default 127.0.0.1)")
    p.add_argument("--port", type=int, help="port (PEMN_PORT, default 8000)")
    p.add_argument(
        "--store", dest="store_url", help="store URL (PEMN_STORE_URL, default file://./var/store)"
    )
    p.add_argument("--device", help="auto | cpu | cuda[:N] (PEMN_DEVICE)")
    p.add_argument("--runtime", choices=["torch", "onnx"], help="default runtime (PEMN_RUNTIME)")
    p.add_argument(
        "--preload-dir", help="upload every *.pemn of this directory at startup (PEMN_PRELOAD_DIR)"
    )
    p.add_argument(
        "--preload", help="models to materialize at startup, comma-separated or * (PEMN_PRELOAD)"
    )
    args = p.parse_args(argv)
    overrides = {k: v for k, v in vars(args).items() if v is not None}
    for key, value in overrides.items():
        os.environ[f"PEMN_{key.upper()}"] = str(value)
    try:
        settings = Settings()
    except ValidationError as exc:
        for err in exc.errors():
            where = ".".join(str(p) for p in err["loc"]) or "settings"
            print(f"error: {where}: {err['msg'].removeprefix('Value error, ')}", file=sys.stderr)
        return EXIT_CONFIG
    limits = ConnectionLimits(
        max_connections=raise_fd_limit(settings.max_connections),
        max_connections_per_client=settings.max_connections_per_client,
        max_header_bytes=settings.max_header_bytes,
        header_timeout_s=settings.header_timeout_s,
    )
    uvicorn.run(
        "service.main:app",
        host=settings.host,
        port=settings.port,
        log_level=settings.log_level,
        access_log=False,
        lifespan="on",
        http=guarded_protocol(limits, settings.http_parser),
        h11_max_incomplete_event_size=settings.max_header_bytes,
        timeout_keep_alive=settings.keep_alive_s,  # type: ignore[arg-type]
        backlog=min(2048, limits.max_connections),
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
