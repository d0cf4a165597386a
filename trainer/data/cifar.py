"""CIFAR-10 and CIFAR-100 in the official *binary* format (not the Python pickles).

CIFAR-10 (``cifar-10-batches-bin/``): ``data_batch_1.bin`` .. ``data_batch_5.bin``
(train) and ``test_batch.bin``; each record is 1 label byte then 3072 pixel bytes
(1024 red, 1024 green, 1024 blue, each a 32x32 row-major plane). Class names come
from ``batches.meta.txt`` (one per line) when present.

CIFAR-100 (``cifar-100-binary/``): ``train.bin`` and ``test.bin``; each record is a
coarse label byte, a fine label byte, then 3072 pixel bytes. We use the 100 fine
labels; names from ``fine_label_names.txt`` when present.

The directory is the ``directory`` argument (``--data-dir``), else
``PEMN_CIFAR10_DIR`` / ``PEMN_CIFAR100_DIR``, else ``~/.cache/pemn/datasets``; it may
be the batches directory itself or its parent.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from trainer.errors import DatasetFormatError, DatasetNotFoundError

__all__ = ["CIFAR10_CLASSES", "load_cifar", "write_cifar_binary"]

CIFAR10_CLASSES = (
    "airplane",
    "automobile",
    "bird",
    "cat",
    "deer",
    "dog",
    "frog",
    "horse",
    "ship",
    "truck",
)
_PIXELS = 3 * 32 * 32

# name -> (env, batches subdirectory, label bytes per record, train files, test files, names file)
_LAYOUT = {
    "cifar10": (
        "PEMN_CIFAR10_DIR",
        "cifar-10-batches-bin",
        1,
        [f"data_batch_{i}.bin" for i in range(1, 6)],
        ["test_batch.bin"],
        "batches.meta.txt",
    ),
    "cifar100": (
        "PEMN_CIFAR100_DIR",
        "cifar-100-binary",
        2,
        ["train.bin"],
        ["test.bin"],
        "fine_label_names.txt",
    ),
}
_DEFAULT_ROOT = Path("~/.cache/pemn/datasets")


def _resolve(name: str, directory: Path | None) -> Path:
    env, sub, _, train, _, _ = _LAYOUT[name]
    if directory is None:
        directory = Path(os.environ.get(env) or _DEFAULT_ROOT)
    directory = directory.expanduser()
    for candidate in (directory, directory / sub):
        if (candidate / train[0]).is_file():
            return candidate
    raise DatasetNotFoundError(
        f"{name} file {train[0]} not found in {directory} or {directory / sub}; download the "
        f"official binary version ({sub}) from https://www.cs.toronto.edu/~kriz/cifar.html, "
        f"unpack it, and point --data-dir or {env} at it"
    )


def _read_records(path: Path, label_bytes: int) -> tuple[np.ndarray, np.ndarray]:
    if not path.is_file():
        raise DatasetNotFoundError(f"CIFAR file {path} not found next to the others")
    raw = np.fromfile(path, dtype=np.uint8)
    record = label_bytes + _PIXELS
    if raw.size == 0 or raw.size % record:
        raise DatasetFormatError(
            f"{path}: size {raw.size} is not a multiple of the {record}-byte record"
        )
    rows = raw.reshape(-1, record)
    labels = rows[:, label_bytes - 1].copy()  # the fine label is the last label byte
    images = rows[:, label_bytes:].reshape(-1, 3, 32, 32).copy()
    return images, labels


def _class_names(directory: Path, names_file: str, count: int) -> tuple[str, ...]:
    path = directory / names_file
    if path.is_file():
        names = [line.strip() for line in path.read_text().splitlines() if line.strip()]
        if len(names) == count:
            return tuple(names)
    if count == 10:
        return CIFAR10_CLASSES
    return tuple(str(i) for i in range(count))


def load_cifar(
    name: str, split: str = "train", directory: Path | None = None
) -> tuple[np.ndarray, np.ndarray, tuple[str, ...]]:
    """Images ``(n, 3, 32, 32)`` uint8, labels ``(n,)`` uint8 and class names of
    ``name`` (``cifar10`` or ``cifar100``), ``split`` train or test."""
    _, _, label_bytes, train, test, names_file = _LAYOUT[name]
    root = _resolve(name, directory)
    parts = [_read_records(root / f, label_bytes) for f in (train if split == "train" else test)]
    images = np.concatenate([p[0] for p in parts])
    labels = np.concatenate([p[1] for p in parts])
    count = 10 if name == "cifar10" else 100
    if int(labels.max()) >= count:
        raise DatasetFormatError(f"{name} labels in {root} exceed {count - 1}")
    return images, labels, _class_names(root, names_file, count)


def write_cifar_binary(
    path: Path, images: np.ndarray, labels: np.ndarray, coarse: np.ndarray | None = None
) -> None:
    """Write records in the official binary layout (for tests and small fixtures):
    ``images`` (n, 3, 32, 32) uint8, ``labels`` (n,) uint8, ``coarse`` for CIFAR-100."""
    n = len(images)
    cols = [] if coarse is None else [coarse.reshape(n, 1)]
    cols += [labels.reshape(n, 1), images.reshape(n, _PIXELS)]
    path.write_bytes(np.concatenate(cols, axis=1).astype(np.uint8).tobytes())
