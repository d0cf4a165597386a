"""A few-step run on a small Fashion-MNIST subset yields a valid bundle whose
materialized network predicts exactly what the score model predicts; the dense
baseline's file reads back into the same network."""

import json

import pytest
import torch

from pemn.bundle import read_bundle
from pemn.materialize import materialize
from pemn.normalize import Normalize
from trainer.checkpoint import CHECKPOINT_NAME, load_checkpoint
from trainer.config import TrainConfig
from trainer.errors import CheckpointError, OutputError
from trainer.export import DEFAULT_EVAL_BATCH_SIZE, export_run
from trainer.loop import Interrupted, train
from trainer.model import build_model
from trainer.run import load_run_data
from trainer.teacher import read_dense

pytestmark = pytest.mark.data


def _quiet(_):
    pass


def _cfg(**kw):
    base = {
        "arch": "convmixer",
        "arch_config": {"width": 32, "depth": 1, "kernel": 3, "patch": 4},
        "strategy": "rp",
        "ratio": 1e-2,
        "train_limit": 256,
        "test_limit": 300,
        "epochs": 1,
        "batch_size": 32,
        "lr_max": 0.05,
        "threads": 2,
    }
    return TrainConfig(**{**base, **kw})


def _score_model(cfg, run_dir):
    data = load_run_data(cfg)
    model = build_model(cfg, data.arch_config)
    load_checkpoint(run_dir / CHECKPOINT_NAME, model)
    return model.eval(), data


@pytest.mark.parametrize(
    "kw",
    [
        {},
        {"strategy": "one_layer", "ratio": None},
        {"strategy": "mp", "ratio": None, "scale": "fan_in"},
    ],
    ids=["rp-1e-2", "one_layer", "mp-fan_in"],
)
def test_bundle_predicts_what_the_score_model_predicts(tmp_path, kw):
    cfg = _cfg(**kw)
    train(cfg, tmp_path / "run", progress=False, echo=_quiet)
    record = export_run(tmp_path / "run", tmp_path / "m.pemn", echo=_quiet)
    data_bytes = (tmp_path / "m.pemn").read_bytes()
    bundle = read_bundle(data_bytes)  # validates every field, the prototype digest included
    assert record["bytes"] == len(data_bytes) and record["prediction_agreement"] == 1.0

    model, data = _score_model(cfg, tmp_path / "run")
    net = materialize(bundle, device="cpu")
    x = data.test.pixels(slice(0, 128))  # the same batch, pixels in [0, 1]
    with torch.no_grad():
        score_logits = model(Normalize(data.mean, data.std, torch.device("cpu"))(x))
        bundle_logits = net(x)
    assert torch.equal(score_logits.argmax(1), bundle_logits.argmax(1))
    # the bundle stores the norm state in float16 (format 2.0's default, relative rounding
    # <= 2**-11): logits agree to that, about 2e-4 here (1e-5 with a float32 state)
    assert torch.allclose(score_logits, bundle_logits, rtol=1e-3, atol=1e-3)

    m = bundle.manifest
    assert m.metrics["test_accuracy"] == record["test_accuracy"]
    assert m.metrics["test_accuracy"] == record["score_model_test_accuracy_eval"]
    assert m.input.mean == data.mean and m.input.std == data.std and m.input.shape == (1, 28, 28)
    assert m.labels[0] == "T-shirt/top" and m.strategy.name == cfg.strategy
    assert json.loads((tmp_path / "run" / "export.json").read_text()) == record


@pytest.mark.parametrize(
    "eval_batch", [DEFAULT_EVAL_BATCH_SIZE, 128], ids=["default-batch", "batch-128"]
)
def test_manifest_metrics_hold_what_a_remeasurement_needs(tmp_path, eval_batch):
    """The bundle's metrics: its own accuracy and what re-measuring it takes (dataset,
    test examples, evaluation batch when not the default), not the training-side
    score-model accuracy, which export.json keeps."""
    cfg = _cfg(eval_batch_size=eval_batch)
    train(cfg, tmp_path / "run", progress=False, echo=_quiet)
    record = export_run(tmp_path / "run", tmp_path / "m.pemn", echo=_quiet)
    manifest = read_bundle((tmp_path / "m.pemn").read_bytes()).manifest
    metrics = manifest.metrics
    assert "input_resize" not in manifest.provenance  # the default rule is not recorded
    expected = {"dataset", "test_examples", "epochs", "test_accuracy"}
    assert set(metrics) == (
        expected if eval_batch == DEFAULT_EVAL_BATCH_SIZE else expected | {"eval_batch_size"}
    )
    assert metrics.get("eval_batch_size", DEFAULT_EVAL_BATCH_SIZE) == eval_batch
    result = json.loads((tmp_path / "run" / "result.json").read_text())
    assert record["score_model_test_accuracy"] == result["test_accuracy"]


def test_dense_file_reads_back_into_the_trained_network(tmp_path):
    cfg = _cfg(strategy="dense", ratio=None)
    train(cfg, tmp_path / "run", progress=False, echo=_quiet)
    record = export_run(tmp_path / "run", tmp_path / "dense.safetensors", echo=_quiet)
    model, data = _score_model(cfg, tmp_path / "run")
    again, _ = read_dense((tmp_path / "dense.safetensors").read_bytes())
    x = Normalize(data.mean, data.std, torch.device("cpu"))(data.test.pixels(slice(0, 64)))
    with torch.no_grad():
        assert torch.equal(model(x), again(x))
    assert record["prediction_agreement"] == 1.0


def test_export_refuses_unfinished_runs_and_leaves_no_partial_file(tmp_path):
    with pytest.raises(Interrupted):
        train(_cfg(), tmp_path / "run", stop_after=3, progress=False, echo=_quiet)
    with pytest.raises(CheckpointError, match="no finished run"):
        export_run(tmp_path / "run", tmp_path / "m.pemn", echo=_quiet)
    train(_cfg(), tmp_path / "run", resume=True, progress=False, echo=_quiet)
    with pytest.raises(OutputError, match="does not exist"):
        export_run(tmp_path / "run", tmp_path / "missing" / "m.pemn", echo=_quiet)
    assert not (tmp_path / "missing").exists()
    assert not list(tmp_path.glob(".*"))
