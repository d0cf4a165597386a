"""Service configuration: one pydantic-settings ``Settings`` (environment prefix
``PEMN_``), served by a cached ``get_settings()`` that tests override."""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from typing import Annotated, Literal

from pydantic import Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

__all__ = ["DEFAULT_SECRETS", "Settings", "get_settings"]

# Values that must never guard a non-development deployment.
DEFAULT_SECRETS = {"", "changeme", "change-me", "secret", "dev", "development", "pemn"}


class Settings(BaseSettings):
    """Every field can be set as ``PEMN_<FIELD>`` in the environment (or a .env file)."""

    model_config = SettingsConfigDict(env_prefix="PEMN_", env_file=".env", extra="ignore")

    environment: Literal["development", "production"] = Field(
        "development", description="production refuses to start without a real API key"
    )
    host: str = Field("127.0.0.1", description="bind address of `python -m service`")
    port: int = Field(8000, ge=1, le=65535, description="port of `python -m service`")
    store_url: str = Field(
        "var/store",
        description="bundle store: a directory path or file:///dir, redis://host:port/db?prefix=p, "
        "s3://bucket/prefix?endpoint_url=...",
    )
    api_key: SecretStr | None = Field(None, description="required for POST/DELETE /models when set")
    max_upload_bytes: int = Field(64 * 2**20, ge=1024, description="largest accepted bundle upload")
    write_deadline_s: float = Field(
        5.0,
        gt=0,
        le=60,
        description="an upload or delete not committed to the store within this is abandoned "
        "(503 with Retry-After) and never commits later",
    )
    max_request_bytes: int = Field(
        32 * 2**20, ge=1024, description="largest accepted predict/infer body"
    )
    # Connection limits (service/connections.py, service/limits.py; docs/operations.md).
    max_connections: int = Field(
        2048,
        ge=1,
        description="connections open at once; one more is answered 503 and closed at once "
        "(lowered to fit the open-file limit, which startup raises to its hard limit)",
    )
    max_connections_per_client: int = Field(
        256,
        ge=0,
        description="connections open at once from one client address (0: no such cap; "
        "raise it behind a proxy that shows every client as one address)",
    )
    max_header_bytes: int = Field(
        64 * 1024, ge=1024, le=2**24, description="request line and headers (431 beyond)"
    )
    header_timeout_s: float = Field(
        10.0,
        gt=0,
        le=3600,
        description="time from a connection's first byte (or its opening) to the end of "
        "the request's headers (408 and close beyond)",
    )
    body_timeout_s: float = Field(
        30.0,
        gt=0,
        le=3600,
        description="time to receive a whole request body once the server reads it "
        "(408 and close beyond)",
    )
    keep_alive_s: float = Field(
        5.0, gt=0, le=3600, description="idle keep-alive connections are closed after this"
    )
    body_budget_bytes: int = Field(
        256 * 2**20,
        ge=1024,
        description="request-body bytes all requests together may hold in memory; a request "
        "that would exceed it is answered 503 with Retry-After (N clients cannot hold N x "
        "max_request_bytes)",
    )
    http_parser: Literal["httptools", "h11"] = Field(
        "httptools", description="uvicorn's HTTP/1.1 parser (both get the limits above)"
    )
    cache_bytes: int = Field(
        1 << 30,
        ge=0,
        description="budget of materialized task weights per device and runtime (the hot "
        "tier; 0: every batch expands its tasks from their packed form)",
    )
    packed_bytes: int = Field(
        1 << 30,
        ge=0,
        description="budget of resident packed tasks (masks and norm state, about 1/30 of "
        "a dense copy each); beyond it the least recently used are fetched again",
    )
    mixed_batches: Literal["per_sample", "per_task"] | None = Field(
        None,
        description="how a batch that mixes tasks of one backbone runs: one pass with "
        "per-sample weights, or one forward per task (default: per the device)",
    )
    device: str = Field("auto", description="auto | cpu | cuda | cuda:N")
    runtime: Literal["torch", "onnx", "auto"] | None = Field(
        None,
        description="default runtime for every model: torch (the backbone's network), onnx "
        "(an ONNX Runtime session per task), auto (torch, and an ONNX Runtime session for "
        "each task hot enough to sustain PEMN_ONNX_HOT_RATE requests per second); unset: "
        "auto on the CPU (measured faster there: docs/benchmarks.md, Serving), torch on a GPU",
    )

    def runtime_for(self, device_type: str) -> str:
        """The default runtime on a device of this type (``cpu``, ``cuda``)."""
        if self.runtime is not None:
            return self.runtime
        return "auto" if device_type == "cpu" else "torch"

    runtime_overrides: Annotated[dict[str, Literal["torch", "onnx", "auto"]], NoDecode] = Field(
        default_factory=dict, description="per-model runtime, e.g. 'fashion=onnx,mnist=torch'"
    )
    onnx_hot_rate: float = Field(
        20.0,
        gt=0,
        le=1e6,
        description="runtime auto: requests per second (averaged over about 5 s) from which "
        "a task gets its own ONNX Runtime session, built in the background",
    )
    channels_last: bool = Field(
        True,
        description="torch runtime: run convolutions in channels-last memory format (faster "
        "on the CPU; outputs differ from NCHW by float rounding)",
    )
    metrics_max_models: int = Field(
        200,
        ge=0,
        le=100_000,
        description="models with their own Prometheus series; later ones are counted "
        "under model='_other' (bounds /metrics on servers with many tasks)",
    )
    max_batch_size: int = Field(64, ge=1, le=4096, description="items per executed batch")
    max_batch_wait_ms: float = Field(
        2.0,
        ge=0,
        le=10_000,
        description="under load, how long the device may wait for a batch to fill after "
        "finishing one (a request on an idle server runs at once)",
    )
    max_queue: int = Field(
        1024, ge=1, description="queued requests beyond which the server answers 503"
    )
    request_timeout_ms: float = Field(
        30_000, gt=0, description="per-request deadline (504 when exceeded)"
    )
    max_request_timeout_ms: float = Field(
        120_000,
        gt=0,
        allow_inf_nan=False,
        description="largest timeout_ms a request may ask for (422 beyond it)",
    )
    max_items_per_request: int = Field(1024, ge=1, description="largest batch one request may send")
    max_top_k: int = Field(100, ge=1)
    # --- image inputs (POST /predict files or base64, OIP BYTES); see service/images.py
    max_image_bytes: int = Field(
        10 * 2**20, ge=1024, description="largest encoded image file (PNG, JPEG, WebP, GIF)"
    )
    max_image_pixels: int = Field(
        40_000_000,
        ge=1,
        le=89_478_485,  # Pillow's own decompression-bomb limit (Image.MAX_IMAGE_PIXELS)
        description="largest image, width x height, checked on its header before decoding",
    )
    max_request_image_pixels: int = Field(
        100_000_000, ge=1, description="pixels of all the images of one request together"
    )
    max_images_per_request: int = Field(
        64, ge=1, le=4096, description="images one request may send"
    )
    image_decode_threads: int = Field(
        2, ge=1, le=64, description="threads decoding large images (each holds one image at a time)"
    )
    preload: Annotated[list[str], NoDecode] = Field(
        default_factory=list,
        description="models to materialize at startup ('*' for all), comma-separated",
    )
    preload_dir: Path | None = Field(
        None, description="upload every *.pemn here into the store at startup"
    )
    poll_interval_s: float = Field(
        2.0, gt=0, description="store change polling (pub/sub is the fast path)"
    )
    store_hints: bool = Field(
        True, description="follow the store's pub/sub hints; false: polling only"
    )
    inference_threads: int = Field(
        0, ge=0, description="torch intra-op threads (0: torch's default)"
    )
    log_level: str = Field("info")

    @field_validator("preload", mode="before")
    @classmethod
    def _split_list(cls, v: object) -> object:
        if isinstance(v, str):
            return [p.strip() for p in v.split(",") if p.strip()]
        return v

    @field_validator("runtime_overrides", mode="before")
    @classmethod
    def _split_map(cls, v: object) -> object:
        if isinstance(v, str):
            out = {}
            for item in filter(None, (p.strip() for p in v.split(","))):
                name, sep, runtime = item.partition("=")
                if not sep:
                    raise ValueError(f"runtime_overrides entry {item!r} is not NAME=RUNTIME")
                out[name.strip()] = runtime.strip()
            return out
        return v

    @field_validator("store_url")
    @classmethod
    def _store(cls, v: str) -> str:
        from pemn.store import StoreError, parse_url

        try:
            parse_url(v)
        except StoreError as exc:
            raise ValueError(str(exc)) from None
        return v

    @field_validator("device")
    @classmethod
    def _device(cls, v: str) -> str:
        if v not in ("auto", "cpu", "cuda") and not (v.startswith("cuda:") and v[5:].isdigit()):
            raise ValueError(f"device {v!r} is not one of auto, cpu, cuda, cuda:N")
        return v

    @model_validator(mode="after")
    def _budget(self) -> Settings:
        largest = max(self.max_request_bytes, self.max_upload_bytes)
        if self.body_budget_bytes < largest:
            raise ValueError(
                f"PEMN_BODY_BUDGET_BYTES ({self.body_budget_bytes}) is smaller than the largest "
                f"body one request may send ({largest}, PEMN_MAX_REQUEST_BYTES / "
                "PEMN_MAX_UPLOAD_BYTES)"
            )
        return self

    @model_validator(mode="after")
    def _secrets(self) -> Settings:
        if self.environment != "development":
            key = self.api_key.get_secret_value() if self.api_key else ""
            if key.strip().lower() in DEFAULT_SECRETS or len(key) < 16:
                raise ValueError(
                    "PEMN_API_KEY must be set to a secret of at least 16 characters outside development "
                    "(PEMN_ENVIRONMENT=production); refusing to start"
                )
        return self


@lru_cache
def get_settings() -> Settings:
    return Settings()
