"""Your own labelled images: ``--dataset folder:PATH`` in the layout Keras and
torchvision read, one folder per class:

    PATH/train/<class>/*.png|jpg|jpeg|webp|gif|bmp   and   PATH/test/<class>/...
    (the test split may be named test/, val/ or validation/), or
    PATH/<class>/...   one folder, split per class by ``val_fraction`` with a fixed
                       seed; the held-out part is the test split

Labels are the class folder names, sorted (a test class missing from train is an
error). Every image goes through ``pemn.images.to_pixels`` (the preprocessing the
server applies to pictures it is sent) at ``image_size`` x ``image_size`` (default:
the first training image's size, when square) with the resize rule; the channel
count is 1 when every image is greyscale, else 3, unless ``channels`` sets it.

Decoding runs in threads (Pillow releases the GIL while it decodes) with a progress
bar, and the result is cached as uint8 ``.npy`` arrays under ``$PEMN_DATASET_CACHE``
(default ``~/.cache/pemn/folders``), keyed by every file's path, size and
modification time and by the preprocessing: the second epoch and the second run do
not decode again. Files that cannot be read are listed and skipped with a count;
files with other extensions are counted and ignored.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import sys
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from tqdm import tqdm

from pemn.images import is_grayscale, to_pixels
from trainer.data.datasets import ImageSet
from trainer.errors import ConfigError, DatasetFormatError, DatasetNotFoundError, TrainerError
from trainer.io import atomic_write_bytes

__all__ = [
    "FOLDER_PREFIX",
    "IMAGE_SUFFIXES",
    "FolderLayout",
    "folder_path",
    "folder_shape",
    "load_folder",
    "scan_folder",
]

FOLDER_PREFIX = "folder:"
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".gif", ".bmp")
_FORMATS = ("PNG", "JPEG", "WEBP", "GIF", "BMP")
_TEST_NAMES = ("test", "val", "validation")
_READER_VERSION = 1  # part of the cache key: bump when decoding changes
_SHOWN = 20  # unreadable files listed by name


def folder_path(dataset: str) -> Path | None:
    """The folder of a ``folder:PATH`` dataset name, else None."""
    if not dataset.startswith(FOLDER_PREFIX):
        return None
    path = dataset[len(FOLDER_PREFIX) :].strip()
    if not path:
        raise ConfigError("--dataset folder:PATH needs a path, e.g. folder:~/pictures")
    return Path(path).expanduser()


@dataclass
class FolderLayout:
    """The files of a folder dataset: (path, label) per split, sorted."""

    root: Path
    classes: tuple[str, ...]
    train: list[tuple[Path, int]]
    test: list[tuple[Path, int]]
    single: bool  # one folder, split by val_fraction
    ignored: list[Path] = field(default_factory=list)  # files that are not images


def _class_files(split_dir: Path, ignored: list[Path]) -> dict[str, list[Path]]:
    out: dict[str, list[Path]] = {}
    for class_dir in sorted(p for p in split_dir.iterdir() if p.is_dir()):
        if class_dir.name.startswith("."):
            continue
        files: list[Path] = []
        for f in sorted(class_dir.rglob("*")):
            if not f.is_file() or any(
                part.startswith(".") for part in f.relative_to(class_dir).parts
            ):
                continue
            (files if f.suffix.lower() in IMAGE_SUFFIXES else ignored).append(f)
        out[class_dir.name] = files
    return out


def _hold_out(
    per_class: dict[str, list[Path]], fraction: float, seed: int
) -> tuple[dict[str, list[Path]], dict[str, list[Path]]]:
    """Per class, a seeded random ``fraction`` of the files (at least one of a class
    of two or more) as the test split."""
    train, test = {}, {}
    for i, (name, files) in enumerate(per_class.items()):
        order = np.random.default_rng([seed, i]).permutation(len(files))
        k = round(fraction * len(files))
        k = min(max(k, 1 if len(files) >= 2 else 0), len(files) - 1)
        test[name] = sorted(files[j] for j in order[:k])
        train[name] = sorted(files[j] for j in order[k:])
    return train, test


def scan_folder(root: Path, val_fraction: float = 0.2, seed: int = 0) -> FolderLayout:
    """The layout of ``root`` (see the module docstring), or a ``DatasetNotFoundError``
    / ``DatasetFormatError`` saying what is missing."""
    if not root.is_dir():
        raise DatasetNotFoundError(f"dataset folder {root} does not exist")
    ignored: list[Path] = []
    test_dir = next((root / n for n in _TEST_NAMES if (root / n).is_dir()), None)
    single = not ((root / "train").is_dir() and test_dir is not None)
    if single:
        if (root / "train").is_dir():
            raise DatasetFormatError(
                f"{root} has train/ but no test/ (or val/, validation/) beside it; add one, "
                f"or put the class folders directly in {root} to split them by --val-fraction"
            )
        train_files, test_files = _hold_out(_class_files(root, ignored), val_fraction, seed)
    else:
        assert test_dir is not None
        train_files = _class_files(root / "train", ignored)
        test_files = _class_files(test_dir, ignored)
        unknown = sorted(set(test_files) - set(train_files))
        if unknown:
            raise DatasetFormatError(
                f"{test_dir} has classes that {root / 'train'} lacks: {', '.join(unknown[:10])}"
            )
    classes = tuple(sorted(c for c, files in train_files.items() if files))
    if len(classes) < 2:
        raise DatasetFormatError(
            f"{root} needs at least two class folders holding images ({', '.join(IMAGE_SUFFIXES)}); "
            f"found {len(classes)}"
        )
    index = {c: i for i, c in enumerate(classes)}

    def pairs(files: dict[str, list[Path]]) -> list[tuple[Path, int]]:
        return [(f, index[c]) for c in sorted(files) if c in index for f in files[c]]

    layout = FolderLayout(root, classes, pairs(train_files), pairs(test_files), single, ignored)
    if not layout.test:
        raise DatasetFormatError(f"{root}: the test split holds no images")
    return layout


def _open(path: Path) -> Image.Image:
    return Image.open(io.BytesIO(path.read_bytes()), formats=_FORMATS)


def folder_shape(
    root: Path, image_size: int | None, channels: int | None
) -> tuple[tuple[int, int, int], int]:
    """(C, H, W) and the class count, cheaply (the layout and the first image's
    header), for checking the architecture before decoding anything."""
    layout = scan_folder(root)
    im = _first_image(layout)
    size = image_size or _square(im, layout.train[0][0])
    c = channels or (1 if is_grayscale(im) else 3)
    return (c, size, size), len(layout.classes)


def _first_image(layout: FolderLayout) -> Image.Image:
    first = layout.train[0][0]
    try:
        return _open(first)
    except Exception as exc:
        raise DatasetFormatError(f"cannot read the first training image {first}: {exc}") from None


def _square(im: Image.Image, path: Path) -> int:
    w, h = im.size
    if w != h:
        raise ConfigError(
            f"the first training image {path} is {w}x{h}; pass --image-size N (images are "
            "resized to N x N)"
        )
    return int(w)


def _decode(path: Path, channels: int | None, size: int, rule: str) -> np.ndarray | str:
    """(C, size, size) uint8, or the reason the file cannot be used. With
    ``channels`` None: 1 for a greyscale image, else 3."""
    try:
        im = _open(path)
        c = channels or (1 if is_grayscale(im) else 3)
        return to_pixels(im, c, (size, size), rule)
    except Exception as exc:  # any reason a file cannot be decoded is reported, not raised
        return f"{type(exc).__name__}: {exc}"


def _cache_key(
    layout: FolderLayout, size: int, channels: int | None, rule: str, fraction: float, seed: int
) -> str:
    h = hashlib.sha256()
    head = {"v": _READER_VERSION, "root": str(layout.root.resolve()), "size": size}
    head |= {"channels": channels, "rule": rule, "fraction": fraction if layout.single else None}
    head |= {"seed": seed if layout.single else None, "classes": layout.classes}
    h.update(json.dumps(head, sort_keys=True).encode())
    for split in (layout.train, layout.test):
        h.update(b"|split|")
        for path, label in split:
            st = path.stat()
            h.update(
                f"{path.relative_to(layout.root)}\0{label}\0{st.st_size}\0{st.st_mtime_ns}\n".encode()
            )
    return h.hexdigest()[:32]


def _cache_dir() -> Path:
    return Path(os.environ.get("PEMN_DATASET_CACHE") or "~/.cache/pemn/folders").expanduser()


def _save(path: Path, array: np.ndarray) -> None:
    buf = io.BytesIO()
    np.save(buf, array, allow_pickle=False)
    atomic_write_bytes(path, buf.getvalue())


def _decode_split(
    files: Sequence[tuple[Path, int]],
    channels: int | None,
    size: int,
    rule: str,
    desc: str,
    show: bool,
) -> tuple[list[np.ndarray], list[int], list[tuple[Path, str]]]:
    arrays, labels, bad = [], [], []
    workers = min(8, os.cpu_count() or 1)
    with (
        ThreadPoolExecutor(workers, thread_name_prefix="pemn-decode") as pool,
        tqdm(total=len(files), desc=desc, disable=not show, dynamic_ncols=True) as bar,
    ):
        results = pool.map(lambda pl: _decode(pl[0], channels, size, rule), files, chunksize=64)
        for (path, label), result in zip(files, results, strict=True):
            bar.update(1)
            if isinstance(result, str):
                bad.append((path, result))
            else:
                arrays.append(result)
                labels.append(label)
    return arrays, labels, bad


def _stack(arrays: list[np.ndarray], channels: int, what: str) -> np.ndarray:
    """(n, channels, H, W); greyscale images copied to 3 channels when needed (the
    same values as converting them to RGB first)."""
    if not arrays:
        raise DatasetFormatError(f"no image of {what} could be read")
    return np.stack([a if a.shape[0] == channels else np.repeat(a, channels, 0) for a in arrays])


def load_folder(
    root: Path,
    *,
    image_size: int | None = None,
    channels: int | None = None,
    resize: str = "resize",
    val_fraction: float = 0.2,
    seed: int = 0,
    progress: bool | None = None,
    echo: Callable[[str], None] = print,
) -> tuple[ImageSet, ImageSet]:
    """The (train, test) ``ImageSet`` of folder dataset ``root``, from the cache when
    it holds them, else decoded (and cached)."""
    layout = scan_folder(root, val_fraction, seed)
    name = f"{FOLDER_PREFIX}{root}"
    size = image_size or _square(_first_image(layout), layout.train[0][0])
    key = _cache_key(layout, size, channels, resize, val_fraction, seed)
    where = _cache_dir() / key
    how = f"{len(layout.classes)} classes, {size}x{size}, resize rule {resize}"
    if layout.ignored:
        echo(
            f"{root}: ignored {len(layout.ignored)} files that are not images ({', '.join(IMAGE_SUFFIXES)})"
        )
    if (where / "meta.json").is_file():
        meta = json.loads((where / "meta.json").read_text())
        sets = tuple(
            ImageSet(
                name,
                torch.from_numpy(np.load(where / f"{s}-images.npy")),
                torch.from_numpy(np.load(where / f"{s}-labels.npy")),
                tuple(meta["classes"]),
            )
            for s in ("train", "test")
        )
        echo(f"{root}: read {len(sets[0])} + {len(sets[1])} images from the cache {where} ({how})")
        _report_skipped(meta["skipped"], echo)
        return sets[0], sets[1]
    show = sys.stderr.isatty() if progress is None else progress
    decoded = {
        s: _decode_split(files, channels, size, resize, f"decoding {s}", show)
        for s, files in (("train", layout.train), ("test", layout.test))
    }
    c = channels or max(
        (a.shape[0] for arrays, _, _ in decoded.values() for a in arrays), default=1
    )
    skipped = [(str(p), why) for _, _, bad in decoded.values() for p, why in bad]
    out = [
        ImageSet(
            name,
            torch.from_numpy(_stack(arrays, c, f"{root} {s}")),
            torch.from_numpy(np.array(labels, dtype=np.int64)),
            layout.classes,
        )
        for s, (arrays, labels, _) in decoded.items()
    ]
    meta = {"root": str(root), "classes": list(layout.classes), "channels": c, "skipped": skipped}
    cached = f"cached in {where}"
    try:
        where.mkdir(parents=True, exist_ok=True)
        for s, data in zip(("train", "test"), out, strict=True):
            _save(where / f"{s}-images.npy", data.images.numpy())
            _save(where / f"{s}-labels.npy", data.labels.numpy())
        atomic_write_bytes(where / "meta.json", json.dumps(meta, indent=1).encode())
    except (OSError, TrainerError) as exc:  # a read-only cache costs decoding time, nothing else
        echo(f"warning: cannot cache the decoded images in {where}: {exc}")
        cached = "not cached"
    echo(
        f"{root}: decoded {len(out[0])} + {len(out[1])} images ({how}, {c} channel"
        f"{'s' if c > 1 else ''}); {cached}"
    )
    _report_skipped(skipped, echo)
    return out[0], out[1]


def _report_skipped(
    skipped: list[list[str]] | list[tuple[str, str]], echo: Callable[[str], None]
) -> None:
    if not skipped:
        return
    echo(f"skipped {len(skipped)} unreadable files:")
    for path, why in skipped[:_SHOWN]:
        echo(f"  {path}: {why}")
    if len(skipped) > _SHOWN:
        echo(f"  ... and {len(skipped) - _SHOWN} more")
