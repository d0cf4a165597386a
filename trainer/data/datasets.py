"""Datasets by name, held in memory as uint8 tensors, plus the validation split and the
normalisation statistics.

Every dataset is an ``ImageSet``: ``images`` (N, C, H, W) uint8 and ``labels`` (N,)
int64 on the CPU, with class names. Pixels become floats in [0, 1] only per batch
(``x / 255``); the trainer then normalises with the per-channel mean/std of the
training split, and records them in the bundle's input spec.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from trainer.data.cifar import load_cifar
from trainer.data.idx import FASHION_MNIST_CLASSES, MNIST_CLASSES, load_idx_dataset
from trainer.errors import ConfigError

__all__ = [
    "DATASETS",
    "DATASET_SHAPES",
    "ImageSet",
    "channel_stats",
    "derive_seed",
    "load_dataset",
    "split_validation",
]

DATASETS = ("fashion-mnist", "mnist", "cifar10", "cifar100")
# (C, H, W) and number of classes of each dataset, known without reading it
DATASET_SHAPES: dict[str, tuple[tuple[int, int, int], int]] = {
    "fashion-mnist": ((1, 28, 28), 10),
    "mnist": ((1, 28, 28), 10),
    "cifar10": ((3, 32, 32), 10),
    "cifar100": ((3, 32, 32), 100),
}


@dataclass(frozen=True)
class ImageSet:
    """Images (N, C, H, W) uint8, labels (N,) int64, class names (len = num_classes)."""

    name: str
    images: torch.Tensor
    labels: torch.Tensor
    classes: tuple[str, ...]

    def __len__(self) -> int:
        return len(self.labels)

    @property
    def shape(self) -> tuple[int, int, int]:
        """(C, H, W) of one image."""
        c, h, w = self.images.shape[1:]
        return (int(c), int(h), int(w))

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    def subset(self, index: torch.Tensor | slice) -> ImageSet:
        return ImageSet(self.name, self.images[index], self.labels[index], self.classes)

    def pixels(self, index: torch.Tensor | slice | None = None) -> torch.Tensor:
        """Float pixels in [0, 1], (n, C, H, W)."""
        x = self.images if index is None else self.images[index]
        return x.float().div_(255.0)


def load_dataset(
    name: str, split: str = "train", directory: Path | None = None, limit: int | None = None
) -> ImageSet:
    """Dataset ``name`` (one of ``DATASETS``), ``split`` train or test, optionally only
    the first ``limit`` examples. Missing files raise ``DatasetNotFoundError``."""
    if name not in DATASETS:
        raise ConfigError(f"unknown dataset {name!r}; choose one of {', '.join(DATASETS)}")
    if split not in ("train", "test"):
        raise ConfigError(f"unknown split {split!r}; choose train or test")
    classes: tuple[str, ...]
    if name in ("fashion-mnist", "mnist"):
        images, labels = load_idx_dataset(name, split, directory)
        images = images[:, None]  # (N, 28, 28) -> (N, 1, 28, 28)
        classes = FASHION_MNIST_CLASSES if name == "fashion-mnist" else MNIST_CLASSES
    else:
        images, labels, classes = load_cifar(name, split, directory)
    if limit is not None:
        images, labels = images[:limit], labels[:limit]
    return ImageSet(
        name,
        torch.from_numpy(np.require(images, requirements=["C", "W"])),
        torch.from_numpy(labels.astype(np.int64)),
        classes,
    )


def derive_seed(*parts: object) -> int:
    """A 63-bit seed (valid for torch) derived from ``parts`` by SHA-256."""
    digest = hashlib.sha256(":".join(map(str, parts)).encode()).digest()
    return int.from_bytes(digest[:8], "little") >> 1  # 63 bits: a valid torch seed


def split_validation(data: ImageSet, size: int, seed: int) -> tuple[ImageSet, ImageSet | None]:
    """Hold out ``size`` examples of ``data`` (a seeded random choice) as a validation
    set. Returns ``(train, validation)``; ``size == 0`` returns ``(data, None)``."""
    if size == 0:
        return data, None
    if not 0 < size < len(data):
        raise ConfigError(
            f"validation size {size} must be between 0 and the training set's {len(data)} examples"
        )
    g = torch.Generator().manual_seed(derive_seed(seed, "validation"))
    perm = torch.randperm(len(data), generator=g)
    val_idx, train_idx = perm[:size].sort().values, perm[size:].sort().values
    return data.subset(train_idx), data.subset(val_idx)


def channel_stats(data: ImageSet) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Per-channel mean and (population) standard deviation of the pixels in [0, 1],
    rounded to 6 decimals (they go into a manifest). Exact integer sums in chunks, so
    the result does not depend on thread count and needs little memory."""
    c = data.shape[0]
    total = torch.zeros(c, dtype=torch.int64)
    squares = torch.zeros(c, dtype=torch.int64)
    for start in range(0, len(data), 4096):
        x = data.images[start : start + 4096].to(torch.int64)  # (n, C, H, W)
        total += x.sum(dim=(0, 2, 3))
        squares += (x * x).sum(dim=(0, 2, 3))
    count = len(data) * data.shape[1] * data.shape[2]
    mean = total.double() / count / 255.0
    var = (squares.double() / count / 255.0**2 - mean * mean).clamp_min(0.0)
    std = var.sqrt().clamp_min(1e-6)
    return (
        tuple(round(float(v), 6) for v in mean),
        tuple(round(float(v), 6) for v in std),
    )
