"""Publishing a bundle: to a running service (``POST /models?name=NAME``) or a store.

``http://`` / ``https://`` URLs name a running service: the bundle is the raw
``application/octet-stream`` body of ``POST {url}/models?name={name}``, with header
``X-API-Key`` when a key is given. ``file://``, ``redis://`` and ``s3://`` URLs name a
bundle store, opened with ``pemn.store.open_store(url)`` and written with
``put(name, data)``. ``check()`` is a cheap reachability test run before training so
that an unreachable target fails in seconds, not after the run.
"""

from __future__ import annotations

import json
import urllib.error
import urllib.parse
import urllib.request
from typing import Any

from trainer.errors import PublishError

__all__ = ["Publisher"]

_TIMEOUT = 30.0


class Publisher:
    """Where a bundle goes; ``check()`` before a run, ``publish(data)`` after it."""

    def __init__(self, url: str, name: str, api_key: str | None = None) -> None:
        self.url = url.rstrip("/")
        self.name = name
        self.api_key = api_key
        self.scheme = urllib.parse.urlsplit(url).scheme
        if self.scheme not in ("http", "https", "file", "redis", "rediss", "s3"):
            raise PublishError(
                f"cannot publish to {url!r}: use http(s)://host:port for a running service "
                "or a store URL (file://, redis://, s3://)"
            )
        if not name:
            raise PublishError("a model name is needed to publish (--name)")

    @property
    def is_service(self) -> bool:
        return self.scheme in ("http", "https")

    def _store(self) -> Any:
        from pemn.store import open_store

        try:
            return open_store(self.url)
        except Exception as exc:
            raise PublishError(f"cannot open the store {self.url}: {exc}") from None

    def _request(self, method: str, path: str, body: bytes | None = None) -> tuple[int, bytes]:
        headers = {"Content-Type": "application/octet-stream"} if body is not None else {}
        if self.api_key:
            headers["X-API-Key"] = self.api_key
        req = urllib.request.Request(self.url + path, data=body, method=method, headers=headers)
        try:
            with urllib.request.urlopen(req, timeout=_TIMEOUT) as resp:
                return resp.status, resp.read()
        except urllib.error.HTTPError as exc:
            return exc.code, exc.read()
        except (urllib.error.URLError, OSError) as exc:
            reason = getattr(exc, "reason", exc)
            raise PublishError(f"cannot reach the service at {self.url}: {reason}") from None

    def check(self) -> None:
        """Raise ``PublishError`` unless the target answers (service: ``/v2/health/live``)."""
        if self.is_service:
            status, _ = self._request("GET", "/v2/health/live")
            if status != 200:
                raise PublishError(f"the service at {self.url} is not live (HTTP {status})")
        else:
            store = self._store()
            try:
                store.marker()  # one round trip to the backend
            except Exception as exc:
                raise PublishError(f"cannot reach the store {self.url}: {exc}") from None
            finally:
                store.close()

    def publish(self, data: bytes) -> str:
        """Upload ``data`` under ``self.name``; returns where it went."""
        if not self.is_service:
            store = self._store()
            try:
                result = store.put(self.name, data)
            except Exception as exc:
                raise PublishError(f"the store {self.url} refused the bundle: {exc}") from None
            finally:
                store.close()
            return f"{self.url} (version {result.version})"
        query = urllib.parse.urlencode({"name": self.name})
        status, body = self._request("POST", f"/models?{query}", data)
        if status not in (200, 201):
            try:
                payload = json.loads(body)
                detail = payload.get("error") or payload.get("detail") or body.decode()
            except (ValueError, AttributeError):
                detail = body.decode(errors="replace")
            raise PublishError(
                f"the service at {self.url} refused the bundle (HTTP {status}): {detail}"
            )
        return f"{self.url}/models/{self.name}"
