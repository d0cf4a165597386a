"""IDX files (the MNIST family's format), plain or gzipped.

Layout: 2 zero bytes, a dtype byte (0x08 = uint8), the number of dimensions, then
one big-endian uint32 per dimension, then the data in row-major order.
"""

from __future__ import annotations

import gzip
import os
from pathlib import Path

import numpy as np

__all__ = ["FASHION_MNIST_DIR", "load_fashion_mnist", "read_idx"]

FASHION_MNIST_DIR = Path("/usr/share/datasets/fashion-mnist")
_INSTALL_HINT = "install them with `apt-get install -y dataset-fashion-mnist` or point PEMN_FASHION_MNIST_DIR at a directory of IDX files"


def read_idx(path: Path) -> np.ndarray:
    """The uint8 array stored in IDX file ``path`` (``.gz`` is decompressed)."""
    raw = gzip.decompress(path.read_bytes()) if path.suffix == ".gz" else path.read_bytes()
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] != 0x08:
        raise ValueError(f"{path}: not a uint8 IDX file (bad magic {raw[:4].hex()})")
    ndim = raw[3]
    header = 4 + 4 * ndim
    shape = tuple(int.from_bytes(raw[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim))
    if len(raw) != header + int(np.prod(shape)):
        raise ValueError(f"{path}: size {len(raw)} does not match the header's shape {shape}")
    return np.frombuffer(raw, dtype=np.uint8, offset=header).reshape(shape)


def _find(directory: Path, stem: str) -> Path:
    for name in (f"{stem}.gz", stem):
        if (directory / name).is_file():
            return directory / name
    raise FileNotFoundError(
        f"Fashion-MNIST file {stem}[.gz] not found in {directory}; {_INSTALL_HINT}"
    )


def load_fashion_mnist(
    split: str = "train", directory: Path | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Images ``(n, 28, 28)`` uint8 and labels ``(n,)`` uint8 of ``split`` (train or test)."""
    if directory is None:
        directory = Path(os.environ.get("PEMN_FASHION_MNIST_DIR", FASHION_MNIST_DIR))
    prefix = {"train": "train", "test": "t10k"}[split]
    images = read_idx(_find(directory, f"{prefix}-images-idx3-ubyte"))
    labels = read_idx(_find(directory, f"{prefix}-labels-idx1-ubyte"))
    return images, labels
