"""Store URLs and options: parsing, defaults, checks, and the credential-free display URL.

``open_store(url, **options)`` accepts each option in the URL query or as a keyword
(keywords win). Unknown options are refused, so a typo never silently does nothing.

Common options (every backend):
  retain            versions kept per name (>= 1, default 10); older ones are dropped
  max_bundle_bytes  largest bundle accepted (default 64 MiB)
  timeout           seconds per backend request, connect and read (default 5)
  retries           attempts of an operation that is safe to repeat (default 3)
  retry_backoff     first pause between attempts in seconds, doubled each time (0.05)
  lock_timeout      seconds a writer waits for the store's write lock (file, S3; 10)
  validator         keyword only: ``callable(bytes) -> dict`` that validates a bundle
                    and returns its summary (default ``pemn.bundle.inspect_bundle``)
Per backend:
  file:///abs/path (or a plain path)  fsync (default true), create (default true)
  redis://[user:pass@]host:port/db    prefix (default "pemn"); rediss:// for TLS
  s3://bucket/prefix                  endpoint_url, region, addressing_style,
                                      aws_access_key_id, aws_secret_access_key,
                                      aws_session_token (else boto3's usual chain),
                                      lock_ttl (seconds a write lock lives, default 30)
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, quote, unquote, urlencode, urlsplit

from pemn.store.errors import StoreConfigError

__all__ = [
    "FileConfig",
    "RedisConfig",
    "S3Config",
    "StoreOptions",
    "Validator",
    "parse_url",
]

Validator = Callable[[bytes], Mapping[str, Any]]
_PREFIX_RE = re.compile(r"[A-Za-z0-9._-]{1,64}(:[A-Za-z0-9._-]{1,64}){0,3}")
_S3_PREFIX_RE = re.compile(r"([A-Za-z0-9._-]{1,64}(/[A-Za-z0-9._-]{1,64}){0,7})?")
_BUCKET_RE = re.compile(r"[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]")


@dataclass(frozen=True)
class StoreOptions:
    """Options every backend shares (see the module docstring)."""

    retain: int = 10
    max_bundle_bytes: int = 64 * 1024 * 1024
    timeout: float = 5.0
    retries: int = 3
    retry_backoff: float = 0.05
    lock_timeout: float = 10.0
    validator: Validator | None = None


@dataclass(frozen=True)
class FileConfig:
    root: Path
    fsync: bool = True
    create: bool = True


@dataclass(frozen=True)
class RedisConfig:
    url: str  # what redis-py's from_url gets: the given URL without our query options
    prefix: str = "pemn"


@dataclass(frozen=True)
class S3Config:
    bucket: str
    prefix: str = ""
    endpoint_url: str | None = None
    region: str | None = None
    addressing_style: str | None = None
    aws_access_key_id: str | None = None
    aws_secret_access_key: str | None = None
    aws_session_token: str | None = None
    lock_ttl: float = 30.0


BackendConfig = FileConfig | RedisConfig | S3Config


def _coerce(name: str, value: Any, kind: Any, display: str) -> Any:
    """Convert a query string (or check a keyword value) to the field's type."""

    def bad(allowed: str) -> StoreConfigError:
        return StoreConfigError(
            f"option {name}={value!r} is invalid: expected {allowed}", store=display
        )

    text = isinstance(value, str)
    if kind in ("int", int):
        try:
            v = int(value) if text else value
        except ValueError:
            raise bad("an integer") from None
        if isinstance(v, bool) or not isinstance(v, int):
            raise bad("an integer")
        return v
    if kind in ("float", float):
        try:
            f = float(value) if text else value
        except ValueError:
            raise bad("a number") from None
        if isinstance(f, bool) or not isinstance(f, int | float) or not f > 0 or f == float("inf"):
            raise bad("a number > 0")
        return float(f)
    if kind in ("bool", bool):
        if text and value.lower() in ("1", "true", "yes", "on"):
            return True
        if text and value.lower() in ("0", "false", "no", "off"):
            return False
        if isinstance(value, bool):
            return value
        raise bad("true or false")
    if name == "validator":
        if not callable(value):
            raise bad("a callable taking bytes and returning a dict")
        return value
    if value is not None and not isinstance(value, str):
        raise bad("a string")
    return value


def _split(fields: Any, options: dict[str, Any], display: str) -> dict[str, Any]:
    """Pop and coerce the options that belong to dataclass ``fields``."""
    out: dict[str, Any] = {}
    for f in dataclasses.fields(fields):
        if f.name in ("root", "url", "bucket"):  # come from the URL itself, never options
            continue
        if f.name in options:
            out[f.name] = _coerce(f.name, options.pop(f.name), f.type, display)
    return out


def _redact(url: str) -> str:
    """A URL with user, password and secret query values removed (for messages)."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    if ":" in host:
        host = f"[{host}]"
    netloc = host + (f":{parts.port}" if parts.port else "")
    secret = {"password", "aws_secret_access_key", "aws_session_token", "aws_access_key_id"}
    query = [(k, v) for k, v in parse_qsl(parts.query, keep_blank_values=True) if k not in secret]
    q = ("?" + urlencode(query, safe="/:")) if query else ""
    return f"{parts.scheme}://{netloc}{parts.path}{q}"


def parse_url(url: str, **kwargs: Any) -> tuple[str, StoreOptions, BackendConfig]:
    """Parse a store URL plus keyword options into (display URL, options, backend config).

    Raises ``StoreConfigError`` for an unknown scheme, a bad value or an unknown option."""
    if not isinstance(url, str) or not url:
        raise StoreConfigError(f"a store URL must be a non-empty string, not {url!r}")
    if "://" not in url:  # a plain path means a local directory store
        url = Path(url).absolute().as_uri()
    parts = urlsplit(url)
    scheme = parts.scheme.lower()
    display = _redact(url)
    options: dict[str, Any] = dict(parse_qsl(parts.query, keep_blank_values=True))
    options.update(kwargs)
    common = StoreOptions(**_split(StoreOptions, options, display))
    if common.retain < 1:
        raise StoreConfigError(
            f"option retain={common.retain} is invalid: expected >= 1", store=display
        )
    if common.max_bundle_bytes < 1 or common.retries < 1:
        raise StoreConfigError("options max_bundle_bytes and retries must be >= 1", store=display)

    config: BackendConfig
    if scheme == "file":
        if parts.netloc not in ("", "localhost"):
            raise StoreConfigError("a file URL needs an absolute path: file:///path", store=display)
        path = unquote(parts.path)
        if not path.startswith("/"):
            raise StoreConfigError("a file URL needs an absolute path: file:///path", store=display)
        config = FileConfig(root=Path(path), **_split(FileConfig, options, display))
        display = f"file://{quote(path)}"
    elif scheme in ("redis", "rediss"):
        opts = _split(RedisConfig, options, display)
        prefix = opts.get("prefix", RedisConfig.prefix)
        if not isinstance(prefix, str) or _PREFIX_RE.fullmatch(prefix) is None:
            raise StoreConfigError(
                f"option prefix={prefix!r} is invalid: expected 1-64 characters from "
                "A-Z a-z 0-9 . _ - (up to 4 parts joined by ':')",
                store=display,
            )
        bare = parts._replace(query="").geturl()
        config = RedisConfig(url=bare, prefix=prefix)
        display = _redact(bare) + f"?prefix={prefix}"
    elif scheme == "s3":
        opts = _split(S3Config, options, display)
        bucket = parts.netloc
        if _BUCKET_RE.fullmatch(bucket) is None:
            raise StoreConfigError(f"invalid S3 bucket name {bucket!r}", store=display)
        prefix = opts.pop("prefix", parts.path).strip("/")
        if _S3_PREFIX_RE.fullmatch(prefix) is None:
            raise StoreConfigError(
                f"invalid S3 key prefix {prefix!r}: up to 8 segments of A-Z a-z 0-9 . _ - "
                "joined by '/'",
                store=display,
            )
        config = S3Config(bucket=bucket, prefix=prefix, **opts)
        display = f"s3://{bucket}/{prefix}" if prefix else f"s3://{bucket}"
        if config.endpoint_url:
            display += f"?endpoint_url={_redact(config.endpoint_url)}"
    else:
        raise StoreConfigError(
            f"unknown store URL scheme {parts.scheme!r}: use file:///path, "
            "redis://host:port/db or s3://bucket/prefix",
            store=display,
        )
    if options:
        raise StoreConfigError(
            "unknown option(s) " + ", ".join(sorted(options)) + f" for a {scheme} store",
            store=display,
        )
    return display, common, config
