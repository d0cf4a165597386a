"""Datasets for the trainer: Fashion-MNIST and MNIST (IDX), CIFAR-10/100 (binary),
your own image folders (``folder:PATH``), held in memory as uint8 tensors; seeded
batches with tensor-op augmentation."""

from trainer.data.batches import Augment, augment, steps_per_epoch, train_batches
from trainer.data.cifar import load_cifar, write_cifar_binary
from trainer.data.datasets import (
    DATASET_SHAPES,
    DATASETS,
    ImageSet,
    channel_stats,
    derive_seed,
    load_dataset,
    split_validation,
)
from trainer.data.folder import FOLDER_PREFIX, folder_path, folder_shape, load_folder
from trainer.data.idx import FASHION_MNIST_DIR, load_fashion_mnist, load_mnist, read_idx

__all__ = [
    "DATASETS",
    "DATASET_SHAPES",
    "FASHION_MNIST_DIR",
    "FOLDER_PREFIX",
    "Augment",
    "ImageSet",
    "augment",
    "channel_stats",
    "derive_seed",
    "folder_path",
    "folder_shape",
    "load_cifar",
    "load_dataset",
    "load_fashion_mnist",
    "load_folder",
    "load_mnist",
    "read_idx",
    "split_validation",
    "steps_per_epoch",
    "train_batches",
    "write_cifar_binary",
]
