"""deploy/k8s: every manifest validated against the Kubernetes OpenAPI schemas
(kubernetes-validate, strict) and cross-checked: kustomization lists every file,
probes hit real routes, ports agree, env names are real settings, references
(ConfigMap, Secret, Service selector, HPA target) resolve, pods run as the image's
non-root user."""

from __future__ import annotations

import secrets
from typing import Any
from urllib.parse import urlsplit

import kubernetes_validate.utils as kv
import pytest
import yaml
from pydantic import ValidationError

from pemn.cli import build_parser
from pemn.store.options import RedisConfig, parse_url
from service.settings import Settings
from tests.deploy.artefacts import (
    K8S,
    get_routes,
    k8s_documents,
    k8s_object,
    setting_env_names,
    stages,
)

# The oldest Kubernetes the manifests promise to work on, and the newest schemas shipped.
VERSIONS = ["1.28.0", kv.latest_version()]


def _kustomization() -> dict[str, Any]:
    return dict(yaml.safe_load((K8S / "kustomization.yaml").read_text()))


def _api() -> dict[str, Any]:
    return k8s_object("Deployment", "pemn-api")


def _container(workload: dict[str, Any]) -> dict[str, Any]:
    (container,) = workload["spec"]["template"]["spec"]["containers"]
    return dict(container)


def test_kustomization_lists_every_manifest_and_nothing_else() -> None:
    k = _kustomization()
    assert k["apiVersion"] == "kustomize.config.k8s.io/v1beta1" and k["kind"] == "Kustomization"
    listed = k["resources"]
    assert len(listed) == len(set(listed))
    assert sorted(listed) == sorted(k8s_documents()), "kustomization.yaml and deploy/k8s differ"


@pytest.mark.parametrize("version", VERSIONS)
def test_every_manifest_is_valid_against_the_kubernetes_schemas(version: str) -> None:
    kinds = []
    for name, docs in k8s_documents().items():
        assert docs, f"{name} is empty"
        for doc in docs:
            kv.validate(doc, version, strict=True)
            kinds.append(doc["kind"])
    for kind in ("Deployment", "Service", "HorizontalPodAutoscaler", "Job", "ConfigMap"):
        assert kind in kinds
    assert "StatefulSet" in kinds
    assert "Secret" not in kinds, "a key in the base would overwrite the real one on apply -k"


def test_strict_validation_catches_a_typo() -> None:
    # the check above must be able to fail
    doc = _api()
    doc["spec"]["template"]["spec"]["containers"][0]["readinessProbe"]["httpGet"]["pth"] = "/x"
    with pytest.raises(kv.ValidationError):
        kv.validate(doc, VERSIONS[-1], strict=True)


def test_probes_use_the_oip_health_routes_on_the_serving_port() -> None:
    container = _container(_api())
    routes = get_routes()
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert ports == {"http": Settings.model_fields["port"].default}
    expected = {
        "livenessProbe": "/v2/health/live",
        "readinessProbe": "/v2/health/ready",
        "startupProbe": "/v2/health/live",
    }
    for probe, path in expected.items():
        get = container[probe]["httpGet"]
        assert get["path"] == path and path in routes
        assert get["port"] in ports
    assert container["command"] == ["python", "-m", "service", "--host", "0.0.0.0"]
    requests = container["resources"]["requests"]
    assert {"cpu", "memory"} <= set(requests), "the HPA needs a CPU request"


def test_service_hpa_and_pdb_select_the_api_pods() -> None:
    api = _api()
    pod_labels = api["spec"]["template"]["metadata"]["labels"]
    assert api["spec"]["selector"]["matchLabels"].items() <= pod_labels.items()
    svc = k8s_object("Service", "pemn-api")
    assert svc["spec"]["selector"].items() <= pod_labels.items()
    (port,) = svc["spec"]["ports"]
    assert port["targetPort"] in {p["name"] for p in _container(api)["ports"]}
    assert port["port"] == Settings.model_fields["port"].default
    hpa = k8s_object("HorizontalPodAutoscaler", "pemn-api")
    target = hpa["spec"]["scaleTargetRef"]
    assert (target["kind"], target["name"]) == ("Deployment", api["metadata"]["name"])
    assert 1 < hpa["spec"]["minReplicas"] < hpa["spec"]["maxReplicas"]
    pdb = k8s_object("PodDisruptionBudget", "pemn-api")
    assert pdb["spec"]["selector"]["matchLabels"].items() <= pod_labels.items()
    assert pdb["spec"]["minAvailable"] < hpa["spec"]["minReplicas"]


def test_env_comes_from_the_configmap_and_secret_and_names_real_settings() -> None:
    known = setting_env_names()
    config = k8s_object("ConfigMap", "pemn-config")
    assert set(config["data"]) <= known, set(config["data"]) - known
    assert "PEMN_API_KEY" not in config["data"]
    # the Secret is created by hand, with the commands of the kustomization and runbook
    create = "kubectl create secret generic pemn-api-key --from-literal=PEMN_API_KEY="
    for doc in (K8S / "kustomization.yaml", K8S.parent / "README.md"):
        text = " ".join(doc.read_text().replace("\\\n", " ").split())
        assert create in text, f"{doc.name} must show how to create the Secret"
    assert "PEMN_API_KEY" in known
    for workload, refs in (
        (_api(), {("configMapRef", "pemn-config"), ("secretRef", "pemn-api-key")}),
        (k8s_object("Job", "pemn-publish-demo"), {("configMapRef", "pemn-config")}),
    ):
        container = _container(workload)
        got = {(kind, ref["name"]) for e in container["envFrom"] for kind, ref in e.items()}
        assert got == refs
        assert all(e["name"] in known for e in container.get("env", []))
    assert config["data"]["PEMN_PORT"] == str(Settings.model_fields["port"].default)


def test_configmap_settings_load_and_a_missing_key_is_refused(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    data = k8s_object("ConfigMap", "pemn-config")["data"]
    for key, value in data.items():
        monkeypatch.setenv(key, value)
    monkeypatch.delenv("PEMN_API_KEY", raising=False)
    with pytest.raises(ValidationError, match="PEMN_API_KEY must be set to a secret"):
        Settings(_env_file=None)  # type: ignore[call-arg]
    monkeypatch.setenv("PEMN_API_KEY", secrets.token_urlsafe(24))
    s = Settings(_env_file=None)  # type: ignore[call-arg]
    assert s.environment == "production" and s.host == "0.0.0.0"
    assert s.inference_threads == int(float(_container(_api())["resources"]["requests"]["cpu"]))


def test_store_url_points_at_the_redis_service() -> None:
    url = k8s_object("ConfigMap", "pemn-config")["data"]["PEMN_STORE_URL"]
    _, _, backend = parse_url(url)
    assert isinstance(backend, RedisConfig)
    parts = urlsplit(backend.url)
    redis_svc = k8s_object("Service", "pemn-redis")
    assert parts.hostname == redis_svc["metadata"]["name"]
    (port,) = redis_svc["spec"]["ports"]
    assert parts.port == port["port"]
    redis = k8s_object("StatefulSet", "pemn-redis")
    container = _container(redis)
    assert container["args"][container["args"].index("--appendonly") + 1] == "yes"
    assert {p["name"] for p in container["ports"]} == {port["targetPort"]}
    assert redis_svc["spec"]["selector"].items() <= (
        redis["spec"]["template"]["metadata"]["labels"].items()
    )
    assert redis["spec"]["volumeClaimTemplates"][0]["metadata"]["name"] == "data"


def test_publish_job_runs_the_pemn_cli_on_the_shipped_bundles() -> None:
    job = k8s_object("Job", "pemn-publish-demo")
    command = _container(job)["command"]
    assert command[:3] == ["python", "-m", "pemn"]
    args = build_parser().parse_args(command[3:])
    assert args.command == "publish" and args.files == ["/app/examples/bundles"]
    assert args.wait > 0, "the job waits for Redis rather than failing at once"
    assert job["spec"]["template"]["spec"]["restartPolicy"] in ("OnFailure", "Never")


def test_pods_run_as_the_images_non_root_user_with_our_image() -> None:
    cpu = next(s for s in stages() if s.name == "cpu")
    uid = int(cpu.last("USER").value[0].split(":")[0])
    images = {i["name"] for i in _kustomization()["images"]}
    for workload in (_api(), k8s_object("Job", "pemn-publish-demo")):
        pod = workload["spec"]["template"]["spec"]
        assert pod["securityContext"]["runAsNonRoot"] is True
        assert pod["securityContext"]["runAsUser"] == uid
        container = _container(workload)
        assert container["image"] in images
        assert container["securityContext"]["allowPrivilegeEscalation"] is False
        assert container["securityContext"]["capabilities"]["drop"] == ["ALL"]
