"""Store URLs and options (pydantic models): parsing, checks, the credential-free display URL.

``open_store(url, **options)`` accepts each option in the URL query or as a keyword
(keywords win); unknown options are refused, so a typo never silently does nothing.
The fields below are the options; docs/stores.md has the table.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Annotated, Any, Literal
from urllib.parse import parse_qsl, quote, unquote, urlencode, urlsplit

from pydantic import BaseModel, ConfigDict, Field, StrictBool, ValidationError, field_validator

from pemn.store.errors import StoreConfigError

__all__ = [
    "MAX_WRITE_TIMEOUT",
    "FileConfig",
    "RedisConfig",
    "S3Config",
    "StoreOptions",
    "Validator",
    "parse_url",
]

Validator = Callable[[bytes], Mapping[str, Any]]
Seconds = Annotated[float, Field(gt=0, allow_inf_nan=False)]
Count = Annotated[int, Field(ge=1, strict=False)]
MAX_WRITE_TIMEOUT = 60.0  # s: no write waits longer (the directory store relies on it)
_SEGMENT = r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}"  # no "." or ".." segments


class _Options(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid", arbitrary_types_allowed=True)

    @field_validator("*", mode="before")
    @classmethod
    def _no_bool_numbers(cls, v: Any, info: Any) -> Any:
        kind = cls.model_fields[info.field_name].annotation
        if isinstance(v, bool) and kind is not StrictBool and kind is not bool:
            raise ValueError("expected a number, not a boolean")
        return v


class StoreOptions(_Options):
    """Options every backend shares."""

    retain: Count = 10  # versions kept per name; older ones are dropped
    max_bundle_bytes: Count = 64 * 1024 * 1024  # larger bundles are refused first
    timeout: Seconds = 5.0  # per backend request, connect and read
    retries: Count = 3  # attempts of a request that fails with Unavailable
    retry_backoff: Seconds = 0.05  # first pause between attempts, doubled each time
    write_timeout: Annotated[float, Field(gt=0, le=MAX_WRITE_TIMEOUT)] = 10.0  # default deadline
    validator: Validator | None = None  # keyword only: bytes -> summary dict


class FileConfig(_Options):
    root: Path
    fsync: bool = True
    create: bool = True


class RedisConfig(_Options):
    url: str  # what redis-py's from_url gets: the given URL without our query options
    prefix: str = Field("pemn", pattern=r"^[A-Za-z0-9._-]{1,64}(:[A-Za-z0-9._-]{1,64}){0,3}$")


class S3Config(_Options):
    bucket: str = Field(pattern=r"^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$")
    prefix: str = Field("", pattern=rf"^({_SEGMENT}(/{_SEGMENT}){{0,7}})?$")
    endpoint_url: str | None = None
    region: str | None = None
    addressing_style: Literal["path", "virtual"] | None = None
    aws_access_key_id: str | None = None
    aws_secret_access_key: str | None = None
    aws_session_token: str | None = None


BackendConfig = FileConfig | RedisConfig | S3Config


def _redact(url: str) -> str:
    """A URL with user, password and secret query values removed (for messages)."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    netloc = (f"[{host}]" if ":" in host else host) + (f":{parts.port}" if parts.port else "")
    secret = {"password", "aws_secret_access_key", "aws_session_token", "aws_access_key_id"}
    query = [(k, v) for k, v in parse_qsl(parts.query, keep_blank_values=True) if k not in secret]
    q = ("?" + urlencode(query, safe="/:")) if query else ""
    return f"{parts.scheme}://{netloc}{parts.path}{q}"


def _build(model: type[Any], fixed: dict[str, Any], options: dict[str, Any], display: str) -> Any:
    """``model`` from ``fixed`` plus the options it declares (popped from ``options``)."""
    mine = {k: options.pop(k) for k in list(options) if k in model.model_fields and k not in fixed}
    try:
        return model(**fixed, **mine)
    except ValidationError as exc:
        e = exc.errors()[0]
        field = str(e["loc"][0]) if e["loc"] else "?"
        given = {**fixed, **mine}.get(field)
        raise StoreConfigError(
            f"option {field}={given!r} is invalid: {e['msg'].removeprefix('Value error, ')}",
            store=display,
        ) from None


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
    options: dict[str, Any] = {**dict(parse_qsl(parts.query, keep_blank_values=True)), **kwargs}
    common = _build(StoreOptions, {}, options, display)
    config: Any
    if scheme == "file":
        path = unquote(parts.path)
        if parts.netloc not in ("", "localhost") or not path.startswith("/"):
            raise StoreConfigError("a file URL needs an absolute path: file:///path", store=display)
        config = _build(FileConfig, {"root": Path(path)}, options, display)
        display = f"file://{quote(path)}"
    elif scheme in ("redis", "rediss"):
        bare = parts._replace(query="").geturl()
        config = _build(RedisConfig, {"url": bare}, options, display)
        display = _redact(bare) + f"?prefix={config.prefix}"
    elif scheme == "s3":
        prefix = str(options.pop("prefix", parts.path)).strip("/")
        config = _build(S3Config, {"bucket": parts.netloc, "prefix": prefix}, options, display)
        display = f"s3://{config.bucket}/{config.prefix}".rstrip("/")
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
