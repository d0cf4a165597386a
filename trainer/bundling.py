"""A trained score model -> bundle bytes, with the accuracy measured on the bundle.

The bundle is written, read back with ``read_bundle`` (which validates everything,
the prototype digest included), materialized on the CPU, and evaluated on the test
set from raw pixels in [0, 1] (the materialized network normalises by itself with
the input spec's mean/std). That accuracy is written into the final bundle's
metrics as ``test_accuracy``; only the metadata changes between the two writes,
which is checked.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch import nn

from pemn.bundle import InputSpec, read_bundle, write_bundle
from pemn.images import DEFAULT_RESIZE, PROVENANCE_KEY
from pemn.masking import extract_masks, trained_state
from pemn.materialize import materialize
from trainer.config import TrainConfig
from trainer.run import RunData, predict

__all__ = ["bundle_bytes_and_accuracy", "input_spec"]


def input_spec(data: RunData) -> InputSpec:
    """Shape (C, H, W) and the training split's per-channel mean/std of pixels in [0, 1]."""
    return InputSpec(shape=data.train.shape, mean=data.mean, std=data.std)


def bundle_bytes_and_accuracy(
    cfg: TrainConfig,
    model: nn.Module,
    data: RunData,
    metrics: dict[str, Any],
    provenance: dict[str, Any],
) -> tuple[bytes, float, torch.Tensor]:
    """``(bundle bytes, test accuracy of the materialized bundle, its predictions (N,))``."""
    masks = extract_masks(model)
    trained = trained_state(model)

    # the server's image preprocessing reads the resize rule; the default is not recorded
    resize = {} if cfg.resize == DEFAULT_RESIZE else {PROVENANCE_KEY: cfg.resize}

    def write(m: dict[str, Any]) -> bytes:
        return write_bundle(
            arch=cfg.arch,
            config=data.arch_config,
            strategy=cfg.pemn_strategy(),
            density=cfg.density,
            masks=masks,
            trained=trained,
            input_spec=input_spec(data),
            labels=list(data.train.classes),
            metrics=m,
            provenance=provenance | resize,
        )

    first = read_bundle(write(metrics))
    net = materialize(first, device="cpu")
    pred = predict(net, data.test, torch.device("cpu"), cfg.eval_batch_size)
    accuracy = float((pred == data.test.labels).double().mean())
    blob = write({**metrics, "test_accuracy": accuracy})
    final = read_bundle(blob)
    if not (np.array_equal(final.masks, first.masks) and np.array_equal(final.state, first.state)):
        raise RuntimeError("the bundle's tensors changed between two writes of the same model")
    return blob, accuracy, pred
