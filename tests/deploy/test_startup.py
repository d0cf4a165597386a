"""Starting up as Compose and Kubernetes do, with real processes on loopback.

* Missing or default API keys in production: ``python -m service`` exits 78
  (``EXIT_CONFIG``) with one clear sentence and no traceback (short keys: the same
  check, in-process).
* The compose sequence, in its harder order: the api starts (with the api's compose
  environment) before Redis answers, stays live, reports not-ready with the reason
  (the store's address hidden) and the Dockerfile's HEALTHCHECK command fails; Redis
  comes up on that port; the api becomes ready and the HEALTHCHECK passes; the
  publishing job's command (from docker-compose.yml) publishes the demo bundles; the
  api serves ``/predict`` for them without a restart.
* A Redis that answers but refuses the api (a password the api does not have): every
  attempt is logged with Redis's message, the state is in ``/v2/health/ready`` and
  ``/status``, attempts back off; once Redis takes the api's password, it is ready.
"""

from __future__ import annotations

import os
import secrets
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from urllib.parse import parse_qsl, urlencode, urlsplit

import httpx
import numpy as np
import pytest
from pydantic import ValidationError

from pemn.testing import RedisServer, S3Endpoint, ServerProcess, free_port, make_bundle
from service.__main__ import EXIT_CONFIG
from service.settings import Settings
from tests.deploy.artefacts import ROOT, compose_config, healthcheck_argv, stages

REFUSAL = "PEMN_API_KEY must be set to a secret of at least 16 characters"


def _env(**pemn: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PEMN_")}
    return {**env, "PYTHONPATH": str(ROOT), **pemn}


def test_production_refuses_a_short_key() -> None:
    short = "15-chars-secret"
    assert len(short) == 15
    with pytest.raises(ValidationError, match=REFUSAL):
        Settings(_env_file=None, environment="production", api_key=short)  # type: ignore[call-arg]
    ok = Settings(_env_file=None, environment="production", api_key=short + "!")  # type: ignore[call-arg]
    assert ok.api_key is not None


def test_production_server_refuses_a_missing_or_default_key() -> None:
    """Two real processes (each imports torch: they run side by side)."""
    cases = {"missing": None, "default": "changeme"}
    procs: dict[str, subprocess.Popen[str]] = {}
    with tempfile.TemporaryDirectory() as cwd:  # no .env file to pick up
        for case, key in cases.items():
            env = _env(PEMN_ENVIRONMENT="production", PEMN_STORE_URL="redis://127.0.0.1:1/0")
            if key is not None:
                env["PEMN_API_KEY"] = key
            procs[case] = subprocess.Popen(
                [sys.executable, "-m", "service", "--port", str(free_port())],
                env=env,
                cwd=cwd,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
            )
        try:
            for case, proc in procs.items():
                out, err = proc.communicate(timeout=60)
                assert proc.returncode == EXIT_CONFIG == 78, (
                    f"{case}: exit {proc.returncode}\n{out}{err}"
                )
                assert err.strip().splitlines() == [
                    f"error: settings: {REFUSAL} outside development "
                    "(PEMN_ENVIRONMENT=production); refusing to start"
                ], f"{case}: {err}"
                assert "Traceback" not in out + err
        finally:
            for proc in procs.values():
                if proc.poll() is None:
                    proc.kill()
                proc.communicate()


def _demo_bundles(tmp: Path) -> Path:
    """examples/bundles when it holds bundles, else two small generated ones."""
    shipped = ROOT / "examples" / "bundles"
    if any(shipped.glob("*.pemn")):
        return shipped
    d = tmp / "bundles"
    d.mkdir()
    (d / "demo-a.pemn").write_bytes(make_bundle(mask_seed=41))
    (d / "demo-b.pemn").write_bytes(make_bundle(mask_seed=42))
    return d


def _healthcheck(port: int) -> int:
    """Run the cpu image's HEALTHCHECK command against 127.0.0.1:port."""
    cpu = next(s for s in stages() if s.name == "cpu")
    argv = healthcheck_argv(cpu)
    assert argv[0] == "python"
    env = _env(PEMN_PORT=str(port))
    return subprocess.run([sys.executable, *argv[1:]], env=env, capture_output=True).returncode


@pytest.mark.redis
def test_api_waits_for_redis_then_serves_what_the_demo_job_publishes(tmp_path: Path) -> None:
    services = compose_config()["services"]
    port = free_port()  # nothing listens here yet
    store = f"redis://127.0.0.1:{port}/0?prefix=compose-{uuid.uuid4().hex[:8]}"
    key = secrets.token_urlsafe(24)
    env = {**services["api"]["environment"], "PEMN_STORE_URL": store, "PEMN_API_KEY": key}
    assert env["PEMN_ENVIRONMENT"] == "production"
    server = ServerProcess(env, wait=False)
    redis: RedisServer | None = None
    try:
        deadline = time.monotonic() + 120
        while True:
            assert server.proc.poll() is None, f"the api exited:\n{server.log()[-3000:]}"
            try:
                if server.client.get("/v2/health/live").status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert time.monotonic() < deadline, server.log()[-3000:]
            time.sleep(0.1)
        while True:  # "starting", then the reason once the first attempt failed
            ready = server.client.get("/v2/health/ready")
            assert ready.status_code == 503 and ready.json()["ready"] is False
            if ready.json()["status"].startswith("waiting for the store"):
                break
            assert time.monotonic() < deadline, ready.json()
            time.sleep(0.1)
        # the reason, without the store's address (the endpoint is public) ...
        assert f"127.0.0.1:{port}" not in ready.json()["status"], ready.json()
        assert "<store>" in ready.json()["status"]
        # ... which the key's holders and the server's log see
        status = server.client.get("/status", headers={"X-API-Key": key}).json()
        assert f"127.0.0.1:{port}" in status["status"] and status["store"].startswith("redis://")
        assert f"127.0.0.1:{port}" in server.log()
        assert server.client.get("/v2/health/live").status_code == 200
        assert _healthcheck(server.port) != 0, "unhealthy while the store is unreachable"
        assert _healthcheck(free_port()) != 0, "the health check must fail with nothing there"
        time.sleep(1.0)  # a few backoff rounds; still alive and not ready
        assert server.proc.poll() is None
        assert server.client.get("/v2/health/ready").status_code == 503

        redis = RedisServer(port=port)
        server.wait_ready(60)
        assert _healthcheck(server.port) == 0, "healthy once ready"

        # the compose job's command, with the demo bundles' directory on this machine
        command = services["trainer"]["command"]
        bundles = _demo_bundles(tmp_path)
        argv = [sys.executable, *command[1:]]
        argv[argv.index("/app/examples/bundles")] = str(bundles)
        job = subprocess.run(
            argv, env=_env(PEMN_STORE_URL=store), capture_output=True, text=True, timeout=120
        )
        assert job.returncode == 0, job.stderr
        names = sorted(p.stem for p in bundles.glob("*.pemn"))
        assert job.stdout.count("published ") == len(names)

        # the api follows the store: the demo tasks appear without a restart
        deadline = time.monotonic() + 30
        while True:
            listed = {m["name"]: m for m in server.client.get("/models").json()["data"]}
            if set(names) <= set(listed):
                break
            assert time.monotonic() < deadline, f"api lists {sorted(listed)}, not {names}"
            time.sleep(0.1)
        for name in names:
            x = np.zeros((2, *listed[name]["input_shape"]), dtype=np.float32)
            r = server.client.post("/predict", json={"model": name, "inputs": x.tolist()})
            assert r.status_code == 200, r.text
            assert r.json()["version"] == 1 and len(r.json()["outputs"]) == 2
        # model changes need the key from the environment (production)
        r = server.client.delete(f"/models/{names[0]}")
        assert r.status_code == 401
        r = server.client.delete(f"/models/{names[0]}", headers={"X-API-Key": key})
        assert r.status_code == 204
    finally:
        server.stop()
        if redis is not None:
            redis.close()


@pytest.mark.s3
@pytest.mark.slow
def test_the_s3_profile_api_uploads_and_serves_the_demo_bundles(
    tmp_path: Path, s3_server: S3Endpoint
) -> None:
    """api-s3's compose environment, with moto in place of MinIO: the S3 store URL
    (endpoint, region), credentials from AWS_*, PEMN_PRELOAD_DIR uploading at startup."""
    env = dict(compose_config("s3")["services"]["api-s3"]["environment"])
    url = urlsplit(env["PEMN_STORE_URL"])
    query = dict(parse_qsl(url.query))
    assert url.scheme == "s3" and query["endpoint_url"] == "http://minio:9000"
    query["endpoint_url"] = s3_server.endpoint_url
    prefix = f"{url.path.strip('/')}-{uuid.uuid4().hex[:8]}"
    env["PEMN_STORE_URL"] = f"s3://{s3_server.bucket}/{prefix}?{urlencode(query, safe=':/')}"
    bundles = _demo_bundles(tmp_path)
    assert env["PEMN_PRELOAD_DIR"] == "/app/examples/bundles"
    env["PEMN_PRELOAD_DIR"] = str(bundles)
    env["PEMN_API_KEY"] = secrets.token_urlsafe(24)
    assert {"AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"} <= set(env)
    server = ServerProcess(env, timeout=120)
    try:
        listed = {m["name"]: m for m in server.client.get("/models").json()["data"]}
        names = sorted(p.stem for p in bundles.glob("*.pemn"))
        assert sorted(listed) == names
        for name in names:
            x = np.zeros((1, *listed[name]["input_shape"]), dtype=np.float32)
            r = server.client.post("/predict", json={"model": name, "inputs": x.tolist()})
            assert r.status_code == 200, r.text
    finally:
        server.stop()


@pytest.mark.redis
def test_a_redis_refusing_the_password_is_logged_shown_and_retried() -> None:
    key = secrets.token_urlsafe(24)
    wanted, given = "redis-pass-" + secrets.token_hex(8), "api-pass-" + secrets.token_hex(8)
    with RedisServer() as redis:
        cli = _redis_cli(redis.port)
        assert cli("CONFIG", "SET", "requirepass", wanted) == "OK"
        store = f"redis://:{given}@127.0.0.1:{redis.port}/0?prefix=pw-{uuid.uuid4().hex[:8]}"
        server = ServerProcess(
            {"PEMN_STORE_URL": store, "PEMN_API_KEY": key, "PEMN_ENVIRONMENT": "production"},
            wait=False,
        )
        try:
            deadline = time.monotonic() + 90
            while server.log().count("store not usable (attempt") < 4:
                assert server.proc.poll() is None, server.log()[-3000:]
                assert time.monotonic() < deadline, server.log()[-3000:]
                time.sleep(0.2)
            ready = server.client.get("/v2/health/ready")
            assert ready.status_code == 503
            public = ready.json()["status"]
            assert public.startswith("waiting for the store (attempt ")
            assert "WRONGPASS" in public or "invalid username-password" in public, public
            assert given not in public and str(redis.port) not in public
            status = server.client.get("/status", headers={"X-API-Key": key}).json()
            assert f"127.0.0.1:{redis.port}" in status["status"] and given not in status["status"]
            assert given not in server.client.get("/status").text
            # each attempt is one log line with Redis's message, backing off
            log = server.log()
            lines = [ln for ln in log.splitlines() if "store not usable (attempt" in ln]
            assert all("invalid username-password" in ln or "WRONGPASS" in ln for ln in lines)
            assert given not in log
            delays = [float(ln.rpartition("retrying in ")[2].rstrip("s")) for ln in lines]
            assert delays[:3] == sorted(delays[:3]) and delays[2] >= 2 * delays[0]
            # the operator fixes Redis; the api gets there by itself
            assert cli("CONFIG", "SET", "requirepass", given) == "OK"
            server.wait_ready(60)
            assert "store answered after" in server.log()
        finally:
            server.stop()


def _redis_cli(port: int):  # type: ignore[no-untyped-def]
    """``cli(*args)``: one command (RESP) to the Redis on ``port``, authenticating with
    the password the previous ``CONFIG SET requirepass`` set."""
    password: list[str] = []

    def cli(*args: str) -> str:
        import socket

        with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
            commands = [("AUTH", password[0])] if password else []
            commands.append(args)
            for command in commands:
                frame = f"*{len(command)}\r\n" + "".join(
                    f"${len(a.encode())}\r\n{a}\r\n" for a in command
                )
                s.sendall(frame.encode())
                reply = s.recv(4096).decode().strip()
        if args[:2] == ("CONFIG", "SET") and args[2] == "requirepass":
            password[:] = [args[3]]
        return reply.lstrip("+")

    return cli
