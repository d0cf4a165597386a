"""From a finished run's checkpoint to its deliverable file, with the accuracy measured
on what was written.

PEMN runs become bundles (``pemn.bundle``): the bytes are read back with
``read_bundle``, materialized, and evaluated on the test set; that accuracy is the
one recorded in the bundle's metrics, and the materialized network's predictions
are compared with the score model's.

The dense baseline is not a PEMN model: it becomes a safetensors file of the plain
model's state dict with a JSON ``manifest`` in its metadata (arch, config, input
spec, labels, metrics); its accuracy is measured after reading that file back.

``export.json`` in the run directory records what was written (path, bytes, accuracy
of the written file, agreement with the score model).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from pemn.normalize import Normalize
from trainer.bundling import bundle_bytes_and_accuracy
from trainer.checkpoint import CHECKPOINT_NAME, load_checkpoint
from trainer.config import TrainConfig
from trainer.errors import CheckpointError
from trainer.io import atomic_write_bytes, atomic_write_json
from trainer.model import build_model
from trainer.run import load_run_data, predict, read_result
from trainer.teacher import DENSE_FORMAT, dense_bytes, read_dense

__all__ = ["BUNDLE_NAME", "DENSE_NAME", "export_run"]

DEFAULT_EVAL_BATCH_SIZE: int = TrainConfig.model_fields["eval_batch_size"].default

BUNDLE_NAME = "bundle.pemn"
DENSE_NAME = "dense.safetensors"


def export_run(
    run_dir: Path,
    out: Path,
    *,
    provenance: dict[str, Any] | None = None,
    echo: Callable[[str], None] = print,
) -> dict[str, Any]:
    """Write the deliverable of finished run ``run_dir`` to ``out`` (atomically) and
    ``export.json``; returns that record."""
    result = read_result(run_dir)
    if result is None:
        raise CheckpointError(f"{run_dir} holds no finished run (no result.json)")
    cfg = TrainConfig.from_dict(result["config"])
    data = load_run_data(cfg)
    model = build_model(cfg, data.arch_config)
    state = load_checkpoint(run_dir / CHECKPOINT_NAME, model)
    if state.epoch != cfg.epochs:
        raise CheckpointError(f"the checkpoint in {run_dir} is not the final one")
    model.eval()
    provenance = dict(provenance or {})
    if result.get("teacher"):  # which teacher (the command names its path)
        provenance["teacher_sha256"] = result["teacher"]["sha256"][:16]
    device = torch.device("cpu")
    normalize = Normalize(data.mean, data.std, device)
    score_pred = predict(model, data.test, device, cfg.eval_batch_size, normalize)
    # What a reader needs to re-measure the accuracy (tests/trainer/test_examples.py),
    # nothing more: the bundle's own accuracy is added once it is measured on the bundle;
    # the score model's, from training, stays in result.json and export.json. The
    # evaluation batch is recorded only when it is not the default a re-measurement assumes.
    metrics: dict[str, Any] = {
        "dataset": cfg.dataset,
        "test_examples": len(data.test),
        "epochs": cfg.epochs,
    }
    if cfg.eval_batch_size != DEFAULT_EVAL_BATCH_SIZE:
        metrics["eval_batch_size"] = cfg.eval_batch_size
    if result.get("val_accuracy") is not None:
        metrics["val_accuracy"] = result["val_accuracy"]
    if cfg.dense:
        manifest = {
            "format": DENSE_FORMAT,
            "arch": cfg.arch,
            "config": data.arch_config,
            "input": result["input"],
            "labels": result["classes"],
            "metrics": metrics,
            "provenance": provenance,
        }
        first = dense_bytes(model, manifest)
        pred = predict(read_dense(first)[0], data.test, device, cfg.eval_batch_size, normalize)
        accuracy = float((pred == data.test.labels).double().mean())
        manifest["metrics"] = {**metrics, "test_accuracy": accuracy}
        blob = dense_bytes(model, manifest)
    else:
        blob, accuracy, pred = bundle_bytes_and_accuracy(cfg, model, data, metrics, provenance)
    atomic_write_bytes(out, blob)
    agree = float((pred == score_pred).double().mean())
    record = {
        "path": str(out),
        "bytes": len(blob),
        "test_accuracy": accuracy,
        "score_model_test_accuracy": result["test_accuracy"],
        "score_model_test_accuracy_eval": float((score_pred == data.test.labels).double().mean()),
        "prediction_agreement": agree,
    }
    atomic_write_json(run_dir / "export.json", record)
    echo(
        f"wrote {out} ({len(blob):,} bytes): test accuracy of the written model "
        f"{100 * accuracy:.2f}%, agreement with the score model {100 * agree:.2f}%"
    )
    return record
