"""deploy/README.md (the runbook) against the code, so it cannot drift: the metrics it
says to watch exist, the settings and routes it names exist, and its ``python -m pemn``
command lines parse with the real CLI."""

from __future__ import annotations

import re
import shlex

from prometheus_client.parser import text_string_to_metric_families

from pemn.cli import build_parser
from tests.deploy.artefacts import ROOT, get_routes, setting_env_names

RUNBOOK = ROOT / "deploy" / "README.md"


def _text() -> str:
    return RUNBOOK.read_text()


def test_the_metrics_to_watch_exist() -> None:
    from prometheus_client import generate_latest

    from service.cache import CacheStats
    from service.metrics import Metrics

    m = Metrics()
    m.watch_caches(lambda: [("hot", CacheStats(1, 2, 3, 4, 5, 6, 0.1))])
    # touch the labelled metrics so that their samples are exposed
    m.requests.labels("t", "predict", "200").inc()
    m.latency.labels("t", "predict").observe(0.01)
    m.queue_time.labels("t").observe(0.01)
    m.batch_size.labels("t").observe(1)
    m.materialize_time.labels("task").observe(0.01)
    m.resident_bytes.labels("cpu", "task").set(1)
    m.uploads.labels("created").inc()
    m.store_syncs.inc()
    exposed = {
        s.name
        for family in text_string_to_metric_families(generate_latest(m.registry).decode())
        for s in family.samples
    }
    families = {re.sub(r"_(bucket|sum|count|total|created)$", "", n) for n in exposed}
    named = set(re.findall(r"`(pemn_[a-z_]+)", _text()))
    assert len(named) >= 8
    missing = {n for n in named if n not in exposed and n not in families}
    assert not missing, f"the runbook names metrics the service does not export: {missing}"


def test_settings_and_routes_named_exist() -> None:
    text = _text()
    named = set(re.findall(r"\bPEMN_[A-Z_]+\b", text))
    assert named - setting_env_names() == set()
    paths = set(re.findall(r"(?:localhost:8000|HOST:8000)(/[a-z0-9/]*)", text))
    paths |= set(re.findall(r"`(?:GET |POST |DELETE )?(/v2/health/[a-z]+|/metrics|/status)`", text))
    assert {"/v2/health/ready", "/models", "/metrics"} <= paths
    routes = get_routes() | {"/predict"}  # POST-only routes are not in get_routes
    assert {p.rstrip("/") or "/" for p in paths} - routes == set()


def test_command_lines_parse_with_the_real_clis() -> None:
    parser = build_parser()
    lines = [
        line.split("#")[0].strip()
        for line in _text().splitlines()
        if line.strip().startswith("python -m pemn ")
    ]
    assert len(lines) >= 3
    seen = set()
    for line in lines:
        argv = [a for a in shlex.split(line)[3:] if not (a.startswith("[") or a.endswith("]"))]
        args = parser.parse_args(argv)
        seen.add(args.command)
    assert {"publish", "rollback"} <= seen
