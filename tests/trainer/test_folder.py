"""``--dataset folder:PATH``: a folder per class built from real Fashion-MNIST test
pictures written as PNG files. The pixels read back are the originals, unreadable
files are reported and skipped, the decoded arrays are cached, a brief training run
through the CLI reaches well above chance and records the resize rule in the
bundle, and the layouts' errors say what is wrong."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from pemn.bundle import read_bundle
from trainer.data import load_fashion_mnist, load_folder
from trainer.data.folder import folder_shape, scan_folder
from trainer.errors import ConfigError, DatasetFormatError, DatasetNotFoundError

ROOT = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.data
CLASSES = [
    "t-shirt",
    "trouser",
    "pullover",
    "dress",
    "coat",
    "sandal",
    "shirt",
    "sneaker",
    "bag",
    "ankle-boot",
]


def _write(root: Path, images: np.ndarray, labels: np.ndarray, per_class: int) -> dict[str, list]:
    """``per_class`` pictures of each class as ``root/<class>/NNNN.png``; returns the
    arrays written per class, in file-name order."""
    written: dict[str, list] = {}
    for k, name in enumerate(CLASSES):
        (root / name).mkdir(parents=True, exist_ok=True)
        for n, i in enumerate(np.flatnonzero(labels == k)[:per_class]):
            Image.fromarray(images[i]).save(root / name / f"{n:04d}.png")
            written.setdefault(name, []).append(images[i])
    return written


@pytest.fixture(scope="module")
def fashion() -> tuple[np.ndarray, np.ndarray]:
    return load_fashion_mnist("test")


@pytest.fixture
def split_folder(tmp_path, fashion, monkeypatch) -> tuple[Path, dict[str, list]]:
    monkeypatch.setenv("PEMN_DATASET_CACHE", str(tmp_path / "cache"))
    images, labels = fashion
    root = tmp_path / "clothes"
    train = _write(root / "train", images[:8000], labels[:8000], 80)
    _write(root / "test", images[8000:], labels[8000:], 25)
    (root / "train" / "bag" / "zz-broken.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"\0" * 40)
    (root / "train" / "notes.txt").write_text("not a class folder, not an image")
    (root / "train" / "coat" / "README.md").write_text("not an image")
    return root, train


def test_pixels_are_the_originals_and_bad_files_are_reported(split_folder):
    root, written = split_folder
    said: list[str] = []
    train, test = load_folder(root, echo=said.append)
    assert train.classes == tuple(sorted(CLASSES))
    assert train.images.shape == (800, 1, 28, 28) and len(test) == 250
    text = "\n".join(said)
    assert "skipped 1 unreadable files" in text and "zz-broken.png" in text
    assert "ignored 1 files that are not images" in text  # README.md; notes.txt is no class
    assert "decoded 800 + 250 images" in text
    for k, name in enumerate(train.classes):
        got = train.images[train.labels == k, 0].numpy()
        np.testing.assert_array_equal(got, np.stack(written[name]))
    # the second run reads the cache: no decoding, the same arrays
    again: list[str] = []
    train2, test2 = load_folder(root, echo=again.append)
    assert any("from the cache" in line for line in again), again
    assert not any("decoded" in line for line in again)
    assert "zz-broken.png" in "\n".join(again)  # still reported
    assert (train2.images == train.images).all() and (test2.labels == test.labels).all()
    # another preprocessing is another cache entry
    small, _ = load_folder(root, image_size=14, channels=3, echo=[].append)
    assert small.images.shape == (800, 3, 14, 14)
    assert (small.images[:, 0] == small.images[:, 2]).all()


def test_cli_trains_on_the_folder_well_above_chance(split_folder, tmp_path):
    root, _ = split_folder
    out = tmp_path / "clothes.pemn"
    argv = [sys.executable, "-m", "trainer", "train", "--arch", "mlp", "-c", "hidden=[128]"]
    argv += ["--strategy", "rp", "--ratio", "1e-2", "--dataset", f"folder:{root}"]
    argv += ["--resize", "resize_crop", "--epochs", "6", "--batch-size", "32", "--lr-max", "0.02"]
    argv += ["--threads", "1", "--no-progress", "--out", str(out), "--run-dir", str(tmp_path / "r")]
    proc = subprocess.run(argv, cwd=ROOT, capture_output=True, text=True, timeout=600, check=False)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "skipped 1 unreadable files" in proc.stdout
    bundle = read_bundle(out.read_bytes())
    m = bundle.manifest
    assert m.labels == sorted(CLASSES)
    assert m.provenance["input_resize"] == "resize_crop"
    assert m.metrics["dataset"] == f"folder:{root}"
    assert m.metrics["test_accuracy"] > 0.55, m.metrics  # chance: 0.10
    result = json.loads((tmp_path / "r" / "result.json").read_text())
    assert result["input"]["shape"] == [1, 28, 28]


def test_one_folder_is_split_per_class_with_a_fixed_seed(tmp_path, fashion, monkeypatch):
    monkeypatch.setenv("PEMN_DATASET_CACHE", str(tmp_path / "cache"))
    images, labels = fashion
    root = tmp_path / "one"
    _write(root, images, labels, 20)
    a = scan_folder(root, val_fraction=0.25, seed=0)
    assert a.single and len(a.train) == 150 and len(a.test) == 50
    assert [sum(1 for _, y in a.test if y == k) for k in range(10)] == [5] * 10
    b = scan_folder(root, val_fraction=0.25, seed=0)
    c = scan_folder(root, val_fraction=0.25, seed=1)
    assert a.test == b.test and a.test != c.test
    assert not set(p for p, _ in a.test) & set(p for p, _ in a.train)
    train, test = load_folder(root, val_fraction=0.25, echo=[].append)
    assert (len(train), len(test)) == (150, 50)


def test_colour_images_make_three_channels(tmp_path, monkeypatch):
    monkeypatch.setenv("PEMN_DATASET_CACHE", str(tmp_path / "cache"))
    root = tmp_path / "colours"
    for name, colour in (("red", (220, 20, 20)), ("blue", (20, 20, 220))):
        (root / name).mkdir(parents=True)
        for i in range(6):
            Image.new("RGB", (40, 30), colour).save(root / name / f"{i}.jpg", quality=95)
    Image.new("L", (40, 30), 128).save(root / "red" / "grey.png")
    with pytest.raises(ConfigError, match="--image-size"):
        folder_shape(root, None, None)  # 40x30 is not square
    assert folder_shape(root, 16, None) == ((3, 16, 16), 2)
    train, test = load_folder(root, image_size=16, val_fraction=0.3, echo=[].append)
    assert train.images.shape[1:] == (3, 16, 16)
    grey = [x for x in (*train.images, *test.images) if (x == 128).all()]
    assert len(grey) == 1  # the greyscale picture, copied to R, G and B
    red = train.images[train.labels == train.classes.index("red")]
    assert (red[:, 0].float().mean() > 150).item() or len(red) == 1


def test_layout_errors_say_what_is_wrong(tmp_path):
    with pytest.raises(DatasetNotFoundError, match="does not exist"):
        scan_folder(tmp_path / "nowhere")
    (tmp_path / "a" / "train" / "x").mkdir(parents=True)
    Image.new("L", (8, 8)).save(tmp_path / "a" / "train" / "x" / "0.png")
    with pytest.raises(DatasetFormatError, match="no test/"):
        scan_folder(tmp_path / "a")
    (tmp_path / "b" / "only").mkdir(parents=True)
    Image.new("L", (8, 8)).save(tmp_path / "b" / "only" / "0.png")
    with pytest.raises(DatasetFormatError, match="at least two class folders"):
        scan_folder(tmp_path / "b")
    for split, name in (("train", "cat"), ("train", "dog"), ("test", "cat"), ("test", "eel")):
        (tmp_path / "c" / split / name).mkdir(parents=True)
        Image.new("L", (8, 8)).save(tmp_path / "c" / split / name / "0.png")
    with pytest.raises(DatasetFormatError, match="eel"):
        scan_folder(tmp_path / "c")
