"""``python -m trainer`` as a user runs it: help, the resolved config, and bad input
(one clear sentence, non-zero exit, no traceback, nothing left at --out)."""

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from trainer.cli import build_parser, main

ROOT = Path(__file__).resolve().parents[2]
TINY = ["--arch", "mlp", "-c", "hidden=[32]", "--train-limit", "256", "--test-limit", "100"]
TINY += ["--epochs", "1", "--batch-size", "64", "--threads", "1", "--no-progress"]


def _run(*args, env=None):
    return subprocess.run(
        [sys.executable, "-m", "trainer", *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, **(env or {})},
        check=False,
    )


def _one_error_line(proc):
    assert proc.returncode != 0
    assert "Traceback" not in proc.stderr, proc.stderr
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), proc.stderr
    return lines[0]


def test_every_flag_has_help_text():
    proc = _run("train", "--help")
    assert proc.returncode == 0
    flags = [tok for tok in proc.stdout.split() if tok.startswith("--") and "[" not in tok]
    assert {"--arch", "--strategy", "--ratio", "--epochs", "--out", "--publish"} <= {
        f.rstrip(",") for f in flags
    }
    parser = build_parser()
    for sub in parser._subparsers._group_actions[0].choices.values():  # type: ignore[union-attr]
        for action in sub._actions:
            assert action.help, f"{sub.prog} {action.option_strings} has no help"


@pytest.mark.data
def test_dense_run_prints_config_and_writes_its_file(tmp_path):
    out = tmp_path / "dense.safetensors"
    proc = _run(
        "train", *TINY, "--strategy", "dense", "--out", str(out), "--run-dir", str(tmp_path / "run")
    )
    assert proc.returncode == 0, proc.stderr
    assert "resolved config:" in proc.stdout
    assert re.search(r"\n  strategy +\= \"dense\"\n", proc.stdout), proc.stdout
    assert out.stat().st_size > 0 and (tmp_path / "run" / "metrics.jsonl").exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temp files left


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["--data-dir", "/nonexistent/fmnist"], "/nonexistent/fmnist"),
        (["-c", "hidden=[32]", "--arch", "convmixer"], "config key"),
        (["--arch", "convmixer", "-c", "patch=30"], "patch"),
        (["--arch", "vit", "-c", "patch=3"], "patch"),
        (["--strategy", "rp"], "--ratio"),
        (["--strategy", "mp", "--ratio", "0.1"], "ratio"),
        (["--lr-max", "-1"], "--lr-max"),
        (
            ["--device", "cuda:7"] if not torch.cuda.is_available() else ["--device", "tpu"],
            "device",
        ),
    ],
    ids=[
        "missing-dataset",
        "unknown-arch-key",
        "convmixer-patch-vs-image",
        "vit-patch-vs-image",
        "rp-needs-ratio",
        "ratio-only-for-rp",
        "bad-lr",
        "bad-device",
    ],
)
def test_bad_input_is_one_sentence_and_no_output(tmp_path, capsys, args, needle):
    out = tmp_path / "model.pemn"
    argv = [
        *TINY,
        "--strategy",
        "dense",
        *args,
        "--out",
        str(out),
        "--run-dir",
        str(tmp_path / "r"),
    ]
    assert main(["train", *argv]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "\n" not in err and needle in err, err
    assert not out.exists()


def test_bad_input_from_the_real_entry_point(tmp_path):
    out = tmp_path / "model.pemn"
    proc = _run(
        "train", *TINY, "--strategy", "dense", "--data-dir", str(tmp_path), "--out", str(out)
    )
    assert "not found in" in _one_error_line(proc) and proc.returncode == 2
    assert not out.exists()


def test_unknown_flag_is_rejected(tmp_path, capsys):
    with pytest.raises(SystemExit) as exc:
        main(["train", "--out", str(tmp_path / "x"), "--colour", "red"])
    assert exc.value.code == 2
    assert "unrecognized arguments: --colour red" in capsys.readouterr().err


def test_unwritable_output_fails_before_training(tmp_path, capsys):
    out = tmp_path / "no" / "such" / "dir" / "model.pemn"
    assert main(["train", *TINY, "--strategy", "dense", "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert "does not exist" in err and str(out) in err
    assert main(["train", *TINY, "--strategy", "dense", "--out", str(tmp_path)]) == 2
    assert "is a directory" in capsys.readouterr().err


def test_unreachable_publish_target_fails_before_training(tmp_path, capsys):
    out = tmp_path / "model.pemn"
    argv = [*TINY, "--strategy", "mp", "--out", str(out), "--run-dir", str(tmp_path / "r")]
    assert main(["train", *argv, "--publish", "http://127.0.0.1:9"]) == 2
    err = capsys.readouterr().err
    assert "127.0.0.1:9" in err or "bundle format" in err
    assert not out.exists() and not (tmp_path / "r" / "checkpoint.safetensors").exists()
    assert main(["train", *argv, "--publish", "ftp://example.org/x"]) == 2
    assert "http(s)://" in capsys.readouterr().err


def test_missing_mnist_says_how_to_fetch(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("PEMN_MNIST_DIR", str(tmp_path / "empty"))
    argv = [*TINY, "--strategy", "dense", "--dataset", "mnist", "--out", str(tmp_path / "m")]
    assert main(["train", *argv]) == 2
    assert "python -m trainer fetch-mnist" in capsys.readouterr().err
