"""``python -m pemn inspect|verify|convert|export|schema`` as subprocesses: exit codes,
messages naming the error code, and the ONNX file written atomically."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest

from pemn.export import onnx_session
from pemn.testing import make_bundle
from tests.pemn.bundle.craft import tiny

ROOT = Path(__file__).resolve().parents[2]
SCHEMA = ROOT / "pemn" / "bundle" / "manifest.schema.json"


def run(*args: str | Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    return subprocess.run(
        [sys.executable, "-m", "pemn", *map(str, args)],
        capture_output=True,
        text=True,
        cwd=ROOT,
        env=env,
        timeout=300,
    )


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("cli")
    out = {
        "valid": make_bundle(metrics={"test_accuracy": 0.75}),
        "digest": tiny(prototype_digest="sha256:" + "0" * 64),
        "truncated": tiny()[:-3],
    }
    paths = {}
    for name, data in out.items():
        paths[name] = d / f"{name}.pemn"
        paths[name].write_bytes(data)
    return paths


def test_inspect_prints_the_summary(files: dict[str, Path]) -> None:
    r = run("inspect", files["valid"])
    assert r.returncode == 0, r.stderr
    assert "pemn bundle v2.0, norm state float16" in r.stdout
    assert "mlp" in r.stdout and "rp ratio 0.01" in r.stdout
    assert "test_accuracy" in r.stdout


def test_inspect_json(files: dict[str, Path]) -> None:
    r = run("inspect", "--json", files["valid"])
    assert r.returncode == 0, r.stderr
    summary = json.loads(r.stdout)
    assert summary["file_size"] == files["valid"].stat().st_size
    assert summary["arch"] == "mlp" and summary["N"] == 28 * 28 * 64 + 64 * 10
    assert summary["metrics"] == {"test_accuracy": 0.75}


@pytest.mark.parametrize(
    ("version", "dtype", "want"),
    [("1.0", None, "float32"), ("2.0", None, "float16"), ("2.0", "bfloat16", "bfloat16")],
)
def test_convert(
    files: dict[str, Path], tmp_path: Path, version: str, dtype: str | None, want: str
) -> None:
    out = tmp_path / "out.pemn"
    extra = ["--state-dtype", dtype] if dtype else []
    r = run("convert", files["valid"], "-o", out, "--format-version", version, *extra)
    assert r.returncode == 0, r.stderr
    assert f"format {version}, norm state {want}" in r.stdout
    summary = json.loads(run("inspect", "--json", out).stdout)
    before = json.loads(run("inspect", "--json", files["valid"]).stdout)
    assert (summary["format_version"], summary["state_dtype"]) == (version, want)
    assert summary["fingerprint"] == before["fingerprint"]
    assert summary["metrics"] == before["metrics"] and summary["labels"] == before["labels"]
    assert (summary["file_size"] > before["file_size"]) == (version == "1.0")


def test_convert_refuses_float16_in_format_1(files: dict[str, Path], tmp_path: Path) -> None:
    out = tmp_path / "out.pemn"
    args = ("convert", files["valid"], "-o", out, "--format-version", "1.0")
    r = run(*args, "--state-dtype", "float16")
    assert r.returncode == 2 and "state_dtype" in r.stderr and "format 1.0" in r.stderr
    assert not out.exists()


def test_inspect_invalid_names_the_code(files: dict[str, Path]) -> None:
    r = run("inspect", files["truncated"])
    assert r.returncode == 2
    assert r.stderr.startswith("error [bundle.truncated]: ") and r.stdout == ""


def test_verify_valid(files: dict[str, Path]) -> None:
    r = run("verify", files["valid"])
    assert r.returncode == 0, r.stderr
    assert f"{files['valid']}: valid (mlp, rp" in r.stdout


@pytest.mark.parametrize(
    ("name", "code"), [("digest", "bundle.digest_mismatch"), ("truncated", "bundle.truncated")]
)
def test_verify_invalid(files: dict[str, Path], name: str, code: str) -> None:
    r = run("verify", files[name])
    assert r.returncode == 1
    assert r.stderr.startswith(f"{files[name]}: invalid [{code}] ")
    assert r.stderr.count("\n") == 1 and r.stdout == ""


def test_verify_missing_file(tmp_path: Path) -> None:
    r = run("verify", tmp_path / "nope.pemn")
    assert r.returncode == 1
    assert "cannot read" in r.stderr and "No such file" in r.stderr


def test_export_writes_a_loadable_onnx_file_atomically(
    files: dict[str, Path], tmp_path: Path
) -> None:
    out = tmp_path / "model.onnx"
    r = run("export", files["valid"], "-o", out)
    assert r.returncode == 0, r.stderr
    assert f"wrote {out}" in r.stdout and "max |onnxruntime - torch|" in r.stdout
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.onnx"]  # no temporary left
    model = onnx.load(str(out))
    onnx.checker.check_model(model)
    assert oct(out.stat().st_mode & 0o777) != oct(0o600)  # not mkstemp's private mode
    session = onnx_session(out.read_bytes())
    (logits,) = session.run(None, {"input": np.zeros((3, 1, 28, 28), np.float32)})
    assert logits.shape == (3, 10)


def test_export_of_invalid_bundle_leaves_the_output_alone(
    files: dict[str, Path], tmp_path: Path
) -> None:
    out = tmp_path / "model.onnx"
    out.write_bytes(b"previous")
    r = run("export", files["digest"], "-o", out)
    assert r.returncode == 2
    assert "[bundle.digest_mismatch]" in r.stderr
    assert out.read_bytes() == b"previous"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.onnx"]


def test_schema_command_prints_the_checked_in_schema() -> None:
    r = run("schema")
    assert r.returncode == 0, r.stderr
    assert r.stdout == SCHEMA.read_text()
