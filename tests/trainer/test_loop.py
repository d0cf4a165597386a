"""The training loop on a small Fashion-MNIST subset: it learns, logs, checkpoints,
and a run interrupted and resumed ends in exactly the state of an uninterrupted one."""

import json
import os
import signal

import pytest
import torch
from safetensors.torch import load_file

from trainer.checkpoint import CHECKPOINT_NAME, load_checkpoint
from trainer.config import TrainConfig
from trainer.errors import CheckpointError, ConfigError
from trainer.loop import Interrupted, _StopFlag, train

pytestmark = pytest.mark.data


def _cfg(**kw):
    base = {
        "arch": "convmixer",
        "arch_config": {"width": 32, "depth": 1, "kernel": 3, "patch": 4},
        "strategy": "rp",
        "ratio": 1e-2,
        "train_limit": 320,
        "test_limit": 200,
        "epochs": 2,
        "batch_size": 32,
        "lr_max": 0.05,
        "log_every": 4,
        "crop_pad": 2,
        "threads": 2,
    }
    return TrainConfig(**{**base, **kw})


def _quiet(_):
    pass


def test_run_writes_log_curves_checkpoint_and_result(tmp_path):
    cfg = _cfg(arch="mlp", arch_config={"hidden": [64]}, val_size=64)
    result = train(cfg, tmp_path, progress=False, echo=_quiet)
    records = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    train_records = [r for r in records if r["kind"] == "train"]
    epochs = [r for r in records if r["kind"] == "epoch"]
    assert [r["step"] for r in train_records] == [4, 8, 12, 16]  # 8 steps per epoch, 16 in all
    assert [e["epoch"] for e in epochs] == [1, 2] and epochs[-1]["step"] == 16
    assert result["test_accuracy"] == epochs[-1]["test_accuracy"]  # the final epoch, not the best
    assert result["val_accuracy"] is not None and result["steps"] == 16
    assert result["test_accuracy"] > 0.35  # chance is 0.1
    assert (tmp_path / "curves.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert result["input"]["shape"] == [1, 28, 28] and len(result["classes"]) == 10
    assert result["stats"]["U"] == int(1e-2 * result["stats"]["M"]) + 1
    state = load_checkpoint(tmp_path / CHECKPOINT_NAME)
    assert (state.epoch, state.step, state.global_step) == (2, 0, 16)


def test_resume_after_interruption_equals_uninterrupted_run(tmp_path):
    stops = [2, 6]  # 6 steps per epoch: once mid-epoch, once at the end of epoch 1
    cfg = _cfg(strategy="mp", ratio=None, train_limit=192)
    whole = train(cfg, tmp_path / "whole", progress=False, echo=_quiet)
    for i, stop in enumerate(stops):
        with pytest.raises(Interrupted, match=f"stopped (at step {stop}|after epoch)"):
            train(cfg, tmp_path / "cut", resume=i > 0, stop_after=stop, progress=False, echo=_quiet)
    cut = train(cfg, tmp_path / "cut", resume=True, progress=False, echo=_quiet)
    a = load_file(tmp_path / "whole" / CHECKPOINT_NAME)
    b = load_file(tmp_path / "cut" / CHECKPOINT_NAME)
    assert sorted(a) == sorted(b)
    assert all(torch.equal(a[k], b[k]) for k in a), [k for k in a if not torch.equal(a[k], b[k])]
    assert cut["test_accuracy"] == whole["test_accuracy"]
    log = [
        {k: v for k, v in json.loads(line).items() if k != "seconds"}
        for line in (tmp_path / "cut" / "metrics.jsonl").read_text().splitlines()
    ]
    ref = [
        {k: v for k, v in json.loads(line).items() if k != "seconds"}
        for line in (tmp_path / "whole" / "metrics.jsonl").read_text().splitlines()
    ]
    assert log == ref


def test_dense_baseline_trains_every_weight(tmp_path):
    result = train(
        _cfg(strategy="dense", ratio=None, epochs=1), tmp_path, progress=False, echo=_quiet
    )
    assert result["stats"]["paper_compression"] == 0.0
    tensors = load_file(tmp_path / CHECKPOINT_NAME)
    assert "model.stem.weight" in tensors and not any(k.endswith("scores") for k in tensors)
    assert any(k.startswith("optim.") and k.endswith("exp_avg") for k in tensors)


def test_checkpoint_refuses_other_config_and_accidental_overwrite(tmp_path):
    with pytest.raises(Interrupted):
        train(_cfg(), tmp_path, stop_after=2, progress=False, echo=_quiet)
    with pytest.raises(CheckpointError, match="--resume"):
        train(_cfg(), tmp_path, progress=False, echo=_quiet)
    with pytest.raises(CheckpointError, match=r"different config.*lr_max"):
        train(_cfg(lr_max=0.5), tmp_path, resume=True, progress=False, echo=_quiet)
    # runtime fields may change on resume
    train(_cfg(threads=1, log_every=5), tmp_path, resume=True, progress=False, echo=_quiet)


def test_incompatible_architecture_is_a_config_error(tmp_path):
    with pytest.raises(ConfigError, match="patch"):
        train(_cfg(arch_config={"patch": 30}), tmp_path, progress=False, echo=_quiet)
    with pytest.raises(ConfigError, match="vit"):
        train(_cfg(arch="vit", arch_config={"patch": 3}), tmp_path, progress=False, echo=_quiet)
    with pytest.raises(ConfigError, match="config key"):
        train(_cfg(arch_config={"colour": 1}), tmp_path, progress=False, echo=_quiet)


def test_sigterm_sets_the_stop_flag():
    flag = _StopFlag()
    before = signal.getsignal(signal.SIGTERM)
    with flag.installed():
        os.kill(os.getpid(), signal.SIGTERM)
        assert flag.signal == signal.SIGTERM
    assert signal.getsignal(signal.SIGTERM) == before
