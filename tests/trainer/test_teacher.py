"""Distillation from a dense teacher: the loss, the checks on the teacher file before
any data is read, and a student that learns the teacher's answers on real data."""

import pytest
import torch
import torch.nn.functional as F

from pemn.bundle import read_bundle
from pemn.materialize import materialize
from pemn.normalize import Normalize
from trainer.config import TrainConfig
from trainer.errors import ConfigError
from trainer.export import export_run
from trainer.loop import train
from trainer.run import load_run_data, predict, preflight
from trainer.teacher import dense_bytes, distill_loss, read_dense


def _quiet(_):
    pass


def _cfg(**kw):
    base = {
        "arch": "mlp",
        "arch_config": {"hidden": [64]},
        "strategy": "rp",
        "ratio": 1e-2,
        "train_limit": 640,
        "test_limit": 500,
        "epochs": 2,
        "batch_size": 32,
        "lr_max": 0.05,
        "threads": 2,
    }
    return TrainConfig(**{**base, **kw})


def test_loss_is_cross_entropy_without_teacher_and_pulls_toward_the_teacher():
    g = torch.Generator().manual_seed(0)
    student, teacher = torch.randn(8, 10, generator=g), torch.randn(8, 10, generator=g)
    y = torch.randint(0, 10, (8,), generator=g)
    ce = F.cross_entropy(student, y)
    assert torch.equal(distill_loss(student, y, None, weight=0.9, temperature=4.0), ce)
    assert torch.equal(distill_loss(student, y, teacher, weight=0.0, temperature=4.0), ce)
    # the soft term vanishes when the student already says what the teacher says
    same = distill_loss(teacher, y, teacher, weight=0.9, temperature=4.0)
    assert torch.allclose(same, 0.1 * F.cross_entropy(teacher, y), atol=1e-6)
    # a gradient step on the soft term alone brings the student's distribution closer
    s = student.clone().requires_grad_(True)
    loss = distill_loss(s, y, teacher, weight=1.0, temperature=2.0)
    loss.backward()
    assert s.grad is not None
    after = student - 0.5 * s.grad
    assert distill_loss(after, y, teacher, weight=1.0, temperature=2.0) < loss
    smoothed = distill_loss(student, y, None, weight=0.9, temperature=4.0, label_smoothing=0.1)
    assert torch.allclose(smoothed, F.cross_entropy(student, y, label_smoothing=0.1))


def test_bad_teacher_files_are_refused_before_any_data_is_read(tmp_path):
    with pytest.raises(ConfigError, match=r"--teacher .*no such file"):
        preflight(_cfg(teacher=str(tmp_path / "missing.safetensors")))
    junk = tmp_path / "junk.safetensors"
    junk.write_bytes(b"\xff" * 64)
    with pytest.raises(ConfigError, match="not a dense model file"):
        preflight(_cfg(teacher=str(junk)))
    with pytest.raises(ConfigError, match="--teacher needs a file"):
        _cfg(teacher=" ")
    with pytest.raises(ConfigError, match="--distill-weight"):
        _cfg(distill_weight=1.5)
    with pytest.raises(ConfigError, match="--distill-temperature"):
        _cfg(distill_temperature=0)


@pytest.mark.data
def test_student_learns_the_teachers_answers_and_the_bundle_names_the_teacher(tmp_path):
    # the teacher: a dense run on the same data, written as the trainer's dense file,
    # whose head is then rotated so that it answers class (k + 1) % 10 where it meant k:
    # a student that learns from it must learn that rotation, which labels never teach
    dense = _cfg(strategy="dense", ratio=None, epochs=3)
    train(dense, tmp_path / "dense", progress=False, echo=_quiet)
    export_run(tmp_path / "dense", tmp_path / "dense.safetensors", echo=_quiet)
    model, manifest = read_dense((tmp_path / "dense.safetensors").read_bytes())
    head = [m for m in model.modules() if isinstance(m, torch.nn.Linear)][-1]
    with torch.no_grad():
        head.weight.copy_(head.weight.roll(1, dims=0))
        if head.bias is not None:
            head.bias.copy_(head.bias.roll(1, dims=0))
    teacher_file = tmp_path / "rotated.safetensors"
    teacher_file.write_bytes(dense_bytes(model, manifest))

    # a bundle is not a teacher; a teacher of other inputs is refused by name
    train(_cfg(epochs=1, train_limit=64), tmp_path / "b", progress=False, echo=_quiet)
    export_run(tmp_path / "b", tmp_path / "b.pemn", echo=_quiet)
    with pytest.raises(ConfigError, match="not a dense model file"):
        preflight(_cfg(teacher=str(tmp_path / "b.pemn")))
    with pytest.raises(
        ConfigError, match=r"takes inputs \(1, 28, 28\).*this run has \(3, 32, 32\)"
    ):
        preflight(_cfg(dataset="cifar10", teacher=str(teacher_file)))

    plain = train(_cfg(), tmp_path / "plain", progress=False, echo=_quiet)
    taught_cfg = _cfg(teacher=str(teacher_file), distill_weight=1.0, distill_temperature=1.0)
    taught = train(taught_cfg, tmp_path / "taught", progress=False, echo=_quiet)
    assert taught["teacher"]["arch"] == "mlp" and len(taught["teacher"]["sha256"]) == 64
    assert plain["teacher"] is None

    data = load_run_data(taught_cfg)
    norm = Normalize(data.mean, data.std, torch.device("cpu"))
    t_pred = predict(model, data.test, torch.device("cpu"), 500, normalize=norm)
    truth = data.test.labels

    def bundle_predictions(run: str) -> torch.Tensor:
        export_run(tmp_path / run, tmp_path / f"{run}.pemn", echo=_quiet)
        bundle = read_bundle((tmp_path / f"{run}.pemn").read_bytes())
        if run == "taught":
            assert bundle.manifest.provenance["teacher_sha256"] == taught["teacher"]["sha256"][:16]
        return predict(materialize(bundle, device="cpu"), data.test, torch.device("cpu"), 500)

    def share(a: torch.Tensor, b: torch.Tensor) -> float:
        return float((a == b).double().mean())

    taught_pred, plain_pred = bundle_predictions("taught"), bundle_predictions("plain")
    assert share(t_pred, (truth + 1) % 10) > 0.5  # the rotated teacher, on test images
    assert share(taught_pred, t_pred) > 0.5 > share(plain_pred, t_pred)
    assert share(plain_pred, truth) > 0.5 > share(taught_pred, truth)
