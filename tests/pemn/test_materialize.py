"""Materialization of bundles over shared backbones (round trips live in
tests/pemn/bundle/test_roundtrip.py): what a backbone may be built from."""

from __future__ import annotations

import numpy as np
import pytest

from pemn.bundle import DigestMismatch, read_bundle
from pemn.materialize import Backbone
from tests.pemn.bundle import craft, spec_reader
from tests.pemn.bundle.craft import Tensor, tiny, tiny_manifest, tiny_tensors


def _planted() -> bytes:
    """A bundle whose embedded prototype is not the generator's, with a manifest
    digest that matches the embedded values: valid on its own."""
    fixed = spec_reader.generate(craft.TINY_LAYERS, {"name": "mask", "seed": 0})
    other = {k: (v * 0 + 0.5).astype(np.float32) for k, v in fixed.items()}
    raw = b"".join(other[n].astype("<f4").tobytes() for n, _ in craft.TINY_LAYERS)
    manifest = tiny_manifest(prototype_embedded=True, prototype_digest=spec_reader.digest(other))
    return tiny(manifest, [*tiny_tensors(), Tensor("prototype", "F32", [18], raw)])


def test_planted_prototype_does_not_become_the_shared_backbone() -> None:
    bundle = read_bundle(_planted())  # self-consistent, so the reader accepts it
    backbone = Backbone.for_bundle(bundle)  # generated from the seed, not the file
    genuine = read_bundle(tiny())
    assert backbone.fingerprint == genuine.fingerprint
    assert backbone.digest == genuine.manifest.prototype_digest
    backbone.task(genuine)  # other tenants' tasks still load
    with pytest.raises(DigestMismatch, match="prototype digest"):
        backbone.task(bundle)


def test_embedded_prototype_is_used_only_when_trusted() -> None:
    bundle = read_bundle(_planted())
    backbone = Backbone.for_bundle(bundle, use_embedded=True)
    task = backbone.task(bundle)
    weight = dict(task.module.named_parameters())["net.layers.0.weight"].numpy()
    mask = np.unpackbits(np.frombuffer(craft.TINY_MASKS[:2], np.uint8), bitorder="little")[:12]
    assert np.array_equal(weight.reshape(-1), 0.5 * mask.astype(np.float32))
