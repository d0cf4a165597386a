"""``python -m service``: run the API with uvicorn. Flags override ``PEMN_*`` settings."""

from __future__ import annotations

import argparse
import os
import sys

import uvicorn
from pydantic import ValidationError

from service.settings import Settings


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
        return 2
    uvicorn.run(
        "service.main:app",
        host=settings.host,
        port=settings.port,
        log_level=settings.log_level,
        access_log=False,
        lifespan="on",
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
