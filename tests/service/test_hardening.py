"""Hostile clients and hostile tensors against a real server on loopback (issue 14).

One server with small limits (1 s header deadline, 1.5 s body deadline, 20
connections per client and 40 in all, 8 KiB of headers, a 2.5 MiB body budget)
over a private Redis. Every request the issue found answering 500 is answered 4xx
naming the field and the limit; connection limits close what they must and leave
other clients served; a disconnect is one info line; the store's address is shown
only with the API key.
"""

from __future__ import annotations

import base64
import contextlib
import io
import json
import socket
import time

import httpx
import numpy as np
import pytest

from pemn.testing import RedisServer, ServerProcess, make_bundle
from tests.service.conftest import API_KEY
from tests.service.helpers import AUTH, images, upload

pytestmark = pytest.mark.redis

MODEL = "hard-mlp"
LIMITS = {
    "header_timeout_s": "1",
    "body_timeout_s": "1.5",
    "max_connections": "40",
    "max_connections_per_client": "20",
    "max_header_bytes": "8192",
    "max_request_bytes": str(2**20),
    "max_upload_bytes": str(2**20),
    "body_budget_bytes": str(5 * 2**19),
    "max_request_timeout_ms": "60000",
}


@pytest.fixture(scope="module")
def hard(start_server, redis_store: str) -> ServerProcess:  # type: ignore[no-untyped-def]
    server: ServerProcess = start_server(store_url=redis_store, api_key=API_KEY, **LIMITS)
    assert upload(server, MODEL, make_bundle(mask_seed=5)).status_code == 201
    return server


def _err(r: httpx.Response, status: int, code: str) -> str:
    assert r.status_code == status, r.text
    assert r.json()["code"] == code, r.text
    return str(r.json()["error"])


def _oip(shape: list[int], data: list[float]) -> dict:
    return {"inputs": [{"name": "input", "shape": shape, "datatype": "FP32", "data": data}]}


def _oip_binary(c: httpx.Client, shape: list[int], raw: bytes) -> httpx.Response:
    head = json.dumps(
        {
            "inputs": [
                {
                    "name": "input",
                    "shape": shape,
                    "datatype": "FP32",
                    "parameters": {"binary_data_size": len(raw)},
                }
            ]
        }
    ).encode()
    return c.post(
        f"/v2/models/{MODEL}/infer",
        content=head + raw,
        headers={"Inference-Header-Content-Length": str(len(head))},
    )


def _npy_b64(shape_text: bytes, arr: np.ndarray) -> str:
    """A .npy file of ``arr`` whose header claims ``shape_text`` instead."""
    buf = io.BytesIO()
    np.save(buf, arr)
    raw = buf.getvalue()
    claimed = raw.replace(str(arr.shape).encode(), shape_text)
    assert claimed != raw
    return base64.b64encode(claimed).decode()


# ------------------------------------------------------------ hostile tensors
def test_the_issues_tensors_are_answered_4xx_naming_field_and_limit(hard: ServerProcess) -> None:
    c = hard.client
    url = f"/v2/models/{MODEL}/infer"
    text = _err(c.post(url, json=_oip([4294967296, 4294967296], [])), 413, "request.too_many_items")
    assert "input" in text and "802816 values" in text and "1024 items" in text
    text = _err(_oip_binary(c, [4294967296, 4294967296], b""), 413, "request.too_many_items")
    assert "802816 values" in text
    text = _err(c.post(url, json=_oip([1] * 70, [1.0])), 422, "request.bad_input")
    assert "70 dimensions" in text and "limit is 64" in text
    text = _err(_oip_binary(c, [1] * 70, b"\0\0\0\0"), 422, "request.bad_input")
    assert "70 dimensions" in text
    text = _err(c.post(url, json=_oip([1, 1, 28, -28], [])), 422, "request.bad_input")
    assert "shape[3] is -28" in text
    npy = _npy_b64(b"(100000, 100000, 100000)", np.zeros((1, 1, 1), np.float32))
    text = _err(
        c.post("/predict", json={"model": MODEL, "inputs": npy}), 413, "request.too_many_items"
    )
    assert "inputs of shape (100000, 100000, 100000)" in text
    one = images(1).tolist()
    body = b'{"model": "%s", "inputs": %s, "timeout_ms": 1e400}' % (
        MODEL.encode(),
        json.dumps(one).encode(),
    )
    r = c.post("/predict", content=body, headers={"content-type": "application/json"})
    assert "timeout_ms" in _err(r, 422, "request.invalid") and "finite" in r.text
    r = c.post("/predict", json={"model": MODEL, "inputs": one, "timeout_ms": 60001})
    assert "(0, 60000] ms" in _err(r, 422, "request.bad_input")
    # ... while a request inside every limit is answered
    assert c.post("/predict", json={"model": MODEL, "inputs": one, "timeout_ms": 30000}).is_success
    deep = b'{"model": "%s", "inputs": ' % MODEL.encode() + b"[" * 50_000 + b"]" * 50_000 + b"}"
    r = c.post("/predict", content=deep, headers={"content-type": "application/json"})
    _err(r, 400, "request.malformed_json")
    assert "Traceback" not in hard.log()


# ------------------------------------------------------------ connections
def _connect(source: str = "127.0.0.1", port: int = 0) -> socket.socket:
    s = socket.socket()
    s.bind((source, 0))
    s.settimeout(10)
    s.connect(("127.0.0.1", port))
    return s


def _read_all(s: socket.socket) -> bytes:
    out = b""
    while True:
        try:
            chunk = s.recv(65536)
        except (ConnectionResetError, TimeoutError):
            break
        if not chunk:
            break
        out += chunk
    return out


def test_slow_headers_are_closed_with_408_after_the_deadline(hard: ServerProcess) -> None:
    s = _connect(port=hard.port)
    start = time.monotonic()
    s.sendall(b"GET /v2/health/live HTTP/1.1\r\nHost: x\r\n")
    for _ in range(3):  # trickling more header bytes does not extend the deadline
        time.sleep(0.25)
        s.sendall(b"X-Slow: 1\r\n")
    answer = _read_all(s)
    elapsed = time.monotonic() - start
    s.close()
    assert answer.startswith(b"HTTP/1.1 408 "), answer
    assert 0.9 < elapsed < 3.0, elapsed
    # a connection that never sends a byte is closed too
    s = _connect(port=hard.port)
    assert _read_all(s).startswith(b"HTTP/1.1 408 ")
    s.close()


def test_oversized_headers_are_refused_with_431(hard: ServerProcess) -> None:
    s = _connect(port=hard.port)
    # the server may close before it has read everything
    with contextlib.suppress(BrokenPipeError, ConnectionResetError):
        s.sendall(b"GET / HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * 64 * 1024 + b"\r\n\r\n")
    answer = _read_all(s)
    s.close()
    assert answer.startswith(b"HTTP/1.1 431 "), answer
    assert b"8192 bytes" in answer
    # headers just under the cap are served
    r = hard.client.get("/v2/health/live", headers={"X-Fits": "a" * 6000})
    assert r.status_code == 200


def test_a_stalled_body_is_answered_408_and_closed(hard: ServerProcess) -> None:
    s = _connect(port=hard.port)
    start = time.monotonic()
    s.sendall(
        b"POST /predict HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        b'Content-Length: 1000\r\n\r\n{"model": '
    )
    answer = _read_all(s)
    s.close()
    assert answer.startswith(b"HTTP/1.1 408 "), answer
    assert b"request.body_timeout" in answer and b"connection: close" in answer.lower()
    assert 1.4 < time.monotonic() - start < 4.0


def _partial_body(port: int, size: int, sent: int) -> socket.socket:
    s = _connect(port=port)
    s.sendall(
        b"POST /predict HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        + f"Content-Length: {size}\r\n\r\n".encode()
        + b" " * sent
    )
    return s


def test_the_body_budget_bounds_what_all_requests_hold_together(hard: ServerProcess) -> None:
    """Budget 2.5 MiB, 1 MiB per request: two held bodies of 0.9 MiB fit, a third
    cannot; once they are gone, the same request is served."""
    size, sent = 2**20, 900 * 1024
    held = [_partial_body(hard.port, size, sent) for _ in range(2)]
    time.sleep(0.3)  # the server reads them into the routes
    third = _partial_body(hard.port, size, sent)
    answer = _read_all(third)
    third.close()
    assert answer.startswith(b"HTTP/1.1 503 "), answer[:200]
    assert b"server.body_budget" in answer and b"retry-after: 1" in answer.lower()
    for s in held:
        s.close()
    time.sleep(0.3)
    r = hard.client.post("/predict", json={"model": MODEL, "inputs": images(1).tolist()})
    assert r.status_code == 200, r.text


def test_connection_caps_per_client_and_in_all(hard: ServerProcess) -> None:
    """20 connections from 127.0.0.1 are the per-client cap: a 21st is refused at
    once while another address is served; 40 in all is the global cap."""
    opened: list[socket.socket] = []
    try:
        opened += [_connect("127.0.0.1", hard.port) for _ in range(20)]
        time.sleep(0.2)
        extra = _connect("127.0.0.1", hard.port)
        assert _read_all(extra).startswith(b"HTTP/1.1 503 ")
        extra.close()
        with httpx.Client(
            base_url=hard.url, transport=httpx.HTTPTransport(local_address="127.0.0.2")
        ) as other:
            assert other.get("/v2/health/live").status_code == 200
        opened += [_connect("127.0.0.2", hard.port) for _ in range(20)]
        time.sleep(0.2)
        third = _connect("127.0.0.3", hard.port)  # its own first connection, but 40 are open
        assert _read_all(third).startswith(b"HTTP/1.1 503 ")
        third.close()
    finally:
        for s in opened:
            s.close()
    time.sleep(0.2)
    assert hard.client.get("/v2/health/live").status_code == 200


# ------------------------------------------------------------ logs and leaks
def test_a_client_disconnect_is_one_info_line(hard: ServerProcess) -> None:
    before = hard.log().count("client disconnected before its request was read")
    s = _connect(port=hard.port)
    s.sendall(
        b"POST /predict HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        b"Content-Length: 5000\r\n\r\n" + b" " * 1000
    )
    time.sleep(0.3)
    s.close()
    deadline = time.monotonic() + 5
    while hard.log().count("client disconnected before its request was read") == before:
        assert time.monotonic() < deadline, hard.log()[-2000:]
        time.sleep(0.05)
    time.sleep(0.2)
    log = hard.log()
    assert log.count("client disconnected before its request was read") == before + 1
    assert "Traceback" not in log and "unexpected error" not in log
    line = next(ln for ln in reversed(log.splitlines()) if "client disconnected" in ln)
    assert " INFO " in line and "POST /predict (request " in line


def test_the_store_address_is_shown_only_with_the_key(start_server) -> None:  # type: ignore[no-untyped-def]
    """A server over a Redis of its own; once that Redis is gone, the store errors
    an anonymous caller reads name no address, those with the key do."""
    with RedisServer() as redis:
        server = start_server(store_url=f"{redis.url}?prefix=addr", api_key=API_KEY)
        assert upload(server, MODEL, make_bundle(mask_seed=5)).status_code == 201
        address = server.client.get("/status", headers=AUTH).json()["store"]
        assert address == f"{redis.url}?prefix=addr"
        public = server.client.get("/status").json()
        assert public["store"] == "redis" and public["status"] == "ready"
        redis.stop()
        anonymous = server.client.get(f"/models/{MODEL}")
        keyed = server.client.get(f"/models/{MODEL}", headers=AUTH)
    host_port = f"127.0.0.1:{redis.port}"
    assert anonymous.status_code == 503, anonymous.text
    assert host_port not in anonymous.text and "<store>" in anonymous.text
    assert keyed.status_code == 503 and host_port in keyed.text
    assert host_port in server.log()  # the server's own log names it


def test_answers_carry_a_request_id(hard: ServerProcess) -> None:
    r = hard.client.get("/v2/health/live")
    assert len(r.headers["x-request-id"]) == 16
    r = hard.client.get("/v2/health/live", headers={"X-Request-ID": "client-id.42"})
    assert r.headers["x-request-id"] == "client-id.42"
    r = hard.client.get("/v2/health/live", headers={"X-Request-ID": "bad id\twith spaces"})
    assert r.headers["x-request-id"] != "bad id\twith spaces"


_BOOM_SERVER = """
import sys, uvicorn
from service.main import create_app
from service.settings import Settings
app = create_app(Settings(_env_file=None, store_url=sys.argv[2]))

@app.get("/boom")
async def boom() -> None:
    raise RuntimeError("a bug in a route")

uvicorn.run(app, host="127.0.0.1", port=int(sys.argv[1]), log_level="info")
"""


def test_an_unexpected_error_is_one_traceback_with_the_request_id(tmp_path) -> None:  # type: ignore[no-untyped-def]
    """The real app (its middleware and handlers) plus one route with a bug, served by
    uvicorn: the 500 names a request id, and the log holds exactly one traceback,
    on the line naming that id (neither Starlette nor uvicorn logs it again)."""
    import subprocess
    import sys

    from pemn.testing import free_port
    from pemn.testing.service import ROOT

    port = free_port()
    log_path = tmp_path / "server.log"
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(
            [sys.executable, "-c", _BOOM_SERVER, str(port), str(tmp_path / "store")],
            cwd=ROOT,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    try:
        url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 60
        while True:
            assert proc.poll() is None, log_path.read_text()
            try:
                if httpx.get(url + "/v2/health/ready", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert time.monotonic() < deadline, log_path.read_text()
            time.sleep(0.1)
        r = httpx.get(url + "/boom", headers={"X-Request-ID": "boom-1"})
        assert r.status_code == 500
        assert r.json() == {
            "error": "internal server error; the failure was logged as request boom-1",
            "code": "internal",
            "request_id": "boom-1",
        }
        assert r.headers["x-request-id"] == "boom-1"
        assert httpx.get(url + "/v2/health/live").status_code == 200  # still serving
        time.sleep(0.3)
    finally:
        proc.terminate()
        proc.wait(15)
    text = log_path.read_text()
    assert text.count("Traceback") == 1, text
    assert "unexpected error on GET /boom (request boom-1)" in text
    assert "RuntimeError: a bug in a route" in text
    assert "Exception in ASGI application" not in text


def test_the_h11_parser_gets_the_same_connection_limits(start_server, redis_store: str) -> None:  # type: ignore[no-untyped-def]
    server = start_server(
        store_url=redis_store,
        api_key=API_KEY,
        http_parser="h11",
        header_timeout_s="1",
        max_header_bytes="8192",
    )
    big = _connect(port=server.port)
    with contextlib.suppress(BrokenPipeError, ConnectionResetError):
        big.sendall(b"GET / HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * 64 * 1024 + b"\r\n\r\n")
    assert _read_all(big).startswith(b"HTTP/1.1 431 ")
    big.close()
    slow = _connect(port=server.port)
    slow.sendall(b"GET / HTTP/1.1\r\n")
    assert _read_all(slow).startswith(b"HTTP/1.1 408 ")
    slow.close()
    assert upload(server, "h11-mlp", make_bundle(mask_seed=6)).status_code == 201
    with httpx.Client(base_url=server.url) as c:  # keep-alive: several requests, one connection
        for _ in range(3):
            r = c.post("/predict", json={"model": "h11-mlp", "inputs": images(2).tolist()})
            assert r.status_code == 200, r.text
