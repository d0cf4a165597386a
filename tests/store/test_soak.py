"""The short soak (bench/soak.py): a real server, clients mixing predictions and
writes, the store (Redis) killed and restarted, or the server SIGKILLed on the
directory store. No acknowledged write is lost, no 500, 503 only around the fault,
and resident tasks keep serving while Redis is down."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def _soak(*args: str) -> dict:
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "bench.soak",
            "--json",
            "--clients",
            "8",
            "--seconds",
            "12",
            *args,
        ],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=400,
        check=True,
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


@pytest.mark.slow
@pytest.mark.redis
@pytest.mark.timeout(420)
def test_soak_with_a_redis_outage() -> None:
    r = _soak("--backend", "redis", "--outage", "3")
    assert r["requests"] > 200 and r["status"].get("201", 0) > 10 and r["status"].get("503", 0) > 0
    assert (r["lost_acknowledged"], r["lost_after_restart"], r["status_500"]) == (0, 0, 0), r
    assert r["stray_503"] == 0, r
    assert r["predictions_during_fault_pct"] == 100.0, r


@pytest.mark.slow
@pytest.mark.timeout(420)
def test_soak_with_the_server_killed_on_the_directory_store() -> None:
    r = _soak("--backend", "file")
    assert r["requests"] > 200 and r["status"].get("201", 0) > 10
    assert (r["lost_acknowledged"], r["lost_after_restart"], r["status_500"]) == (0, 0, 0), r
    assert r["names_checked"] == 8
