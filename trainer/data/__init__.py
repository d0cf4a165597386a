"""Datasets for the trainer: IDX (Fashion-MNIST, MNIST) readers."""

from trainer.data.idx import FASHION_MNIST_DIR, load_fashion_mnist, read_idx

__all__ = ["FASHION_MNIST_DIR", "load_fashion_mnist", "read_idx"]
