"""The store's guarantees over HTTP, against a real server process on a private Redis:
``ETag`` / ``If-Match`` (412), a write deadline answered 503 with ``Retry-After``, a
write whose client left cancelled, and issue 12's reproduction: a delete whose client
timed out must never remove a newer acknowledged upload."""

from __future__ import annotations

import signal
import threading
import time
from collections.abc import Iterator

import httpx
import pytest

from pemn.testing import ServerProcess, make_bundle
from pemn.testing.servers import RedisServer

pytestmark = pytest.mark.redis


@pytest.fixture
def redis() -> Iterator[RedisServer]:
    server = RedisServer()
    try:
        yield server
    finally:
        server.close()


def _server(redis: RedisServer, **env: str) -> ServerProcess:
    return ServerProcess(
        {
            "PEMN_STORE_URL": f"{redis.url}?prefix=http&timeout=2",
            "PEMN_POLL_INTERVAL_S": "0.5",
            **env,
        }
    )


def _upload(s: ServerProcess, name: str, data: bytes, **headers: str) -> httpx.Response:
    h = {"content-type": "application/octet-stream", **headers}
    return s.client.post(f"/models?name={name}", content=data, headers=h)


def test_etag_and_if_match(redis: RedisServer) -> None:
    s = _server(redis)
    try:
        first = _upload(s, "cond", make_bundle(mask_seed=1))
        assert first.status_code == 201
        etag = first.headers["etag"]
        assert etag == f'"{first.json()["content_id"]}"'
        assert s.client.get("/models/cond").headers["etag"] == etag
        second = _upload(s, "cond", make_bundle(mask_seed=2), **{"If-Match": etag})
        assert second.status_code == 201 and second.json()["version"] == 2
        # "replace what I saw" and "delete what I saw" with what is now stale: 412
        for r in (
            _upload(s, "cond", make_bundle(mask_seed=3), **{"If-Match": etag}),
            s.client.delete("/models/cond", headers={"If-Match": etag}),
        ):
            assert r.status_code == 412, r.text
            assert r.json()["code"] == "store.precondition_failed"
            assert second.json()["content_id"] in r.json()["error"]
        assert s.client.get("/models/cond").json()["version"] == 2
        assert _upload(s, "fresh", make_bundle(mask_seed=4), **{"If-Match": "*"}).status_code == 412
        bad = s.client.delete("/models/cond", headers={"If-Match": 'W/"x"'})
        assert (bad.status_code, bad.json()["code"]) == (400, "request.bad_if_match")
        assert (
            s.client.delete(
                "/models/cond", headers={"If-Match": second.headers["etag"]}
            ).status_code
            == 204
        )
        assert s.client.get("/models/cond").status_code == 404
    finally:
        s.stop()


@pytest.mark.slow
def test_write_deadline_is_503_with_retry_after_and_never_commits_later(redis: RedisServer) -> None:
    s = _server(redis, PEMN_WRITE_DEADLINE_S="2")
    try:
        assert _upload(s, "kept", make_bundle(mask_seed=1)).status_code == 201
        redis.pause()  # the store stops answering
        try:
            start = time.monotonic()
            up = _upload(s, "late", make_bundle(mask_seed=2))
            gone = s.client.delete("/models/kept")
            took = time.monotonic() - start
        finally:
            redis.resume()
        for r in (up, gone):
            assert r.status_code == 503, r.text
            assert r.headers["retry-after"] == "1"
            assert r.json()["code"] == "store.deadline_exceeded"
        assert took < 2 * 2 + 3  # each answered at its 2 s deadline
        time.sleep(3)  # whatever was queued in the frozen Redis has run by now
        assert s.client.get("/models/late").status_code == 404
        assert s.client.get("/models/kept").status_code == 200
    finally:
        s.stop()


@pytest.mark.slow
def test_a_write_whose_client_left_is_cancelled(redis: RedisServer) -> None:
    s = _server(redis, PEMN_WRITE_DEADLINE_S="30")  # only the disconnect can stop it
    try:
        redis.pause()
        try:
            with pytest.raises(httpx.TimeoutException):
                s.client.post(
                    "/models?name=left",
                    content=make_bundle(mask_seed=5),
                    headers={"content-type": "application/octet-stream"},
                    timeout=1.5,
                )
            time.sleep(0.5)
        finally:
            redis.resume()
        time.sleep(4)
        assert s.client.get("/models/left").status_code == 404
    finally:
        s.stop()


@pytest.mark.slow
@pytest.mark.timeout(240)
def test_a_late_delete_never_removes_a_newer_acknowledged_upload(redis: RedisServer) -> None:
    """Issue 12: with 16 other clients uploading, DELETE /models/zombie times out on
    the client (2 s), then POST /models?name=zombie answers 201; 15 s later the name
    must still be there. The delete is made late by freezing the replica that got it
    (two replicas share the store): once thawed, it finds its client gone."""
    a, b = _server(redis), _server(redis)
    stop = threading.Event()

    def uploader(i: int) -> None:
        with httpx.Client(base_url=b.url, timeout=10) as c:
            n = 0
            while not stop.is_set():
                n += 1
                try:
                    c.post(
                        f"/models?name=other-{i}",
                        content=make_bundle(mask_seed=1000 * i + n % 4),
                        headers={"content-type": "application/octet-stream"},
                    )
                except httpx.HTTPError:
                    time.sleep(0.1)

    threads = [threading.Thread(target=uploader, args=(i,), daemon=True) for i in range(16)]
    try:
        assert _upload(b, "zombie", make_bundle(mask_seed=7)).status_code == 201
        for t in threads:
            t.start()
        time.sleep(1)
        a.proc.send_signal(signal.SIGSTOP)
        try:
            with pytest.raises(httpx.TimeoutException):
                a.client.delete("/models/zombie", timeout=2.0)
            up = _upload(b, "zombie", make_bundle(mask_seed=8))
            assert up.status_code == 201, up.text
        finally:
            a.proc.send_signal(signal.SIGCONT)
        time.sleep(15)
        for s in (a, b):
            got = s.client.get("/models/zombie")
            assert got.status_code == 200, got.text
            assert got.headers["etag"] == up.headers["etag"]
    finally:
        stop.set()
        for t in threads:
            t.join(15)
        a.stop()
        b.stop()


def test_a_store_that_is_down_is_503_never_500(redis: RedisServer) -> None:
    s = _server(redis, PEMN_WRITE_DEADLINE_S="3")
    try:
        assert _upload(s, "here", make_bundle(mask_seed=1)).status_code == 201
        redis.stop()
        for r in (
            _upload(s, "here", make_bundle(mask_seed=2)),
            s.client.delete("/models/here"),
            s.client.get("/models/here"),  # its versions are read from the store
        ):
            assert r.status_code == 503, r.text
            assert r.headers["retry-after"] == "1"
            assert r.json()["code"].startswith("store.")
            assert "Redis" in r.json()["error"] or "deadline" in r.json()["error"]
    finally:
        s.stop()
