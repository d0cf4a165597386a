"""What a run derives from its config before training: the cheap checks, the data
(splits and normalisation statistics), and predictions of a model on a split.

Shared by the loop (``trainer.loop``) and the export of a finished run
(``trainer.export``), which must see exactly the data the run saw.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from pemn.devices import resolve_device
from pemn.normalize import Normalize
from trainer.config import TrainConfig
from trainer.data import (
    DATASET_SHAPES,
    ImageSet,
    channel_stats,
    folder_path,
    folder_shape,
    load_dataset,
    load_folder,
    split_validation,
)
from trainer.model import build_model, model_config
from trainer.teacher import teacher_manifest

__all__ = [
    "RunData",
    "accuracy",
    "load_run_data",
    "predict",
    "preflight",
    "read_result",
]


@dataclass
class RunData:
    """Everything data-dependent a run needs, derived from the config alone."""

    train: ImageSet
    val: ImageSet | None
    test: ImageSet
    mean: tuple[float, ...]  # per channel, of the training split's pixels in [0, 1]
    std: tuple[float, ...]
    arch_config: dict[str, Any]  # full architecture config (in_channels etc. included)


def load_run_data(cfg: TrainConfig) -> RunData:
    """Load the datasets, hold out the validation split, compute normalisation stats."""
    directory = Path(cfg.data_dir) if cfg.data_dir else None
    root = folder_path(cfg.dataset)
    if root is not None:
        full, test = load_folder(
            root,
            image_size=cfg.image_size,
            channels=cfg.channels,
            resize=cfg.resize,
            val_fraction=cfg.val_fraction,
            seed=cfg.seed,
        )
        full, test = full.subset(slice(0, cfg.train_limit)), test.subset(slice(0, cfg.test_limit))
    else:
        full = load_dataset(cfg.dataset, "train", directory, cfg.train_limit)
        test = load_dataset(cfg.dataset, "test", directory, cfg.test_limit)
    train, val = split_validation(full, cfg.val_size, cfg.seed)
    mean, std = channel_stats(train)
    return RunData(train, val, test, mean, std, model_config(cfg, train.shape, train.num_classes))


def preflight(cfg: TrainConfig) -> None:
    """The cheap checks, before any data is read (the config validated itself): the
    device, and that the architecture takes the dataset's image shape (one forward pass)."""
    resolve_device(cfg.device)
    root = folder_path(cfg.dataset)
    if root is not None:
        shape, num_classes = folder_shape(root, cfg.image_size, cfg.channels)
    else:
        shape, num_classes = DATASET_SHAPES[cfg.dataset]
    build_model(cfg, model_config(cfg, shape, num_classes))
    if cfg.teacher is not None:
        teacher_manifest(cfg.teacher, shape, num_classes)


@torch.no_grad()
def predict(
    model: nn.Module,
    data: ImageSet,
    device: torch.device,
    batch_size: int,
    normalize: Normalize | None = None,
    channels_last: bool = False,
) -> torch.Tensor:
    """Predicted classes (N,) int64 of ``model`` in eval mode on ``data``'s pixels
    (normalised first when ``normalize`` is given)."""
    was_training = model.training
    model.eval()
    out = []
    for start in range(0, len(data), batch_size):
        x = data.pixels(slice(start, start + batch_size)).to(device)  # (B, C, H, W) in [0, 1]
        if normalize is not None:
            x = normalize(x)
        if channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        out.append(model(x).argmax(dim=1).cpu())
    model.train(was_training)
    return torch.cat(out)


def accuracy(pred: torch.Tensor, data: ImageSet) -> float:
    """Fraction of ``pred`` (N,) equal to ``data``'s labels."""
    return float((pred == data.labels).double().mean())


def read_result(run_dir: Path) -> dict[str, Any] | None:
    """``result.json`` of a finished run, or None."""
    path = run_dir / "result.json"
    return json.loads(path.read_text()) if path.exists() else None
