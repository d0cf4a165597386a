"""The example bundles (examples/bundles/*.pemn) re-measured on their test sets through
``read_bundle`` + ``materialize``: the accuracy equals the manifest's record.

Exact equality is expected: inference is deterministic on the CPU, and the trainer
measured the same bytes through the same reader and materializer, with the same
evaluation batch size (recorded in the manifest)."""

from pathlib import Path

import pytest
import torch

from pemn.bundle import read_bundle
from pemn.materialize import materialize
from trainer.data import load_dataset
from trainer.export import DEFAULT_EVAL_BATCH_SIZE
from trainer.run import predict

pytestmark = pytest.mark.data

EXAMPLES = Path(__file__).resolve().parents[2] / "examples" / "bundles"
BUNDLES = sorted(EXAMPLES.glob("*.pemn"))


def test_there_are_two_tasks_on_one_backbone():
    bundles = [read_bundle(p.read_bytes()) for p in BUNDLES]
    assert len(bundles) >= 2
    fingerprints = [b.fingerprint for b in bundles]
    assert any(fingerprints.count(f) >= 2 for f in fingerprints)
    assert all(p.stat().st_size < 64 * 1024 for p in BUNDLES)


@pytest.mark.slow
@pytest.mark.parametrize("path", BUNDLES, ids=[p.stem for p in BUNDLES])
def test_example_accuracy_matches_its_manifest(path):
    bundle = read_bundle(path.read_bytes())
    metrics = bundle.manifest.metrics
    # a missing dataset fails here with the command that installs it (`make data`)
    test = load_dataset(str(metrics["dataset"]), "test", limit=int(metrics["test_examples"]))
    net = materialize(bundle, device="cpu")
    batch = int(metrics.get("eval_batch_size", DEFAULT_EVAL_BATCH_SIZE))
    pred = predict(net, test, torch.device("cpu"), batch)
    accuracy = float((pred == test.labels).double().mean())
    assert accuracy == metrics["test_accuracy"], (accuracy, metrics["test_accuracy"])
