"""Datasets: IDX and CIFAR binary readers, missing-file errors, validation split,
normalisation statistics, seeded batches and augmentation."""

import gzip
import struct

import numpy as np
import pytest
import torch

from trainer.data import (
    Augment,
    ImageSet,
    augment,
    channel_stats,
    load_dataset,
    read_idx,
    split_validation,
    steps_per_epoch,
    train_batches,
    write_cifar_binary,
)
from trainer.errors import DatasetFormatError, DatasetNotFoundError


def _write_idx(path, array, gz=False):
    header = bytes([0, 0, 8, array.ndim]) + b"".join(struct.pack(">I", d) for d in array.shape)
    raw = header + array.astype(np.uint8).tobytes()
    path.write_bytes(gzip.compress(raw) if gz else raw)


def _idx_dir(tmp_path, n=20, gz=True):
    rng = np.random.default_rng(0)
    suffix = ".gz" if gz else ""
    for prefix, count in (("train", n), ("t10k", n // 2)):
        images = rng.integers(0, 256, (count, 28, 28))
        labels = np.arange(count) % 10
        _write_idx(tmp_path / f"{prefix}-images-idx3-ubyte{suffix}", images, gz)
        _write_idx(tmp_path / f"{prefix}-labels-idx1-ubyte{suffix}", labels, gz)
    return tmp_path


@pytest.mark.parametrize("gz", [True, False])
def test_mnist_from_a_directory_of_idx_files(tmp_path, gz):
    _idx_dir(tmp_path, gz=gz)
    train = load_dataset("mnist", "train", tmp_path)
    test = load_dataset("mnist", "test", tmp_path)
    assert train.images.shape == (20, 1, 28, 28) and train.images.dtype == torch.uint8
    assert test.labels.tolist() == list(range(10))
    assert train.classes == tuple("0123456789") and train.shape == (1, 28, 28)


def test_environment_variable_names_the_directory(tmp_path, monkeypatch):
    _idx_dir(tmp_path)
    monkeypatch.setenv("PEMN_MNIST_DIR", str(tmp_path))
    assert len(load_dataset("mnist", "train", limit=7)) == 7


def test_missing_files_say_where_and_how(tmp_path):
    with pytest.raises(DatasetNotFoundError) as err:
        load_dataset("fashion-mnist", "train", tmp_path / "nowhere")
    msg = str(err.value)
    assert str(tmp_path / "nowhere") in msg and "apt-get install -y dataset-fashion-mnist" in msg
    with pytest.raises(DatasetNotFoundError, match="fetch-mnist"):
        load_dataset("mnist", "train", tmp_path)
    with pytest.raises(DatasetNotFoundError, match="cifar-10-batches-bin"):
        load_dataset("cifar10", "train", tmp_path)


def test_corrupt_idx_is_a_format_error(tmp_path):
    bad = tmp_path / "x-ubyte"
    bad.write_bytes(b"\x00\x00\x0d\x01" + b"\x00" * 8)
    with pytest.raises(DatasetFormatError, match="bad magic"):
        read_idx(bad)
    _write_idx(bad, np.zeros((3, 2), dtype=np.uint8))
    bad.write_bytes(bad.read_bytes()[:-1])
    with pytest.raises(DatasetFormatError, match="does not match"):
        read_idx(bad)


def _cifar_fixture(root, name, n):
    rng = np.random.default_rng(1)
    images = rng.integers(0, 256, (n, 3, 32, 32)).astype(np.uint8)
    labels = (np.arange(n) % (10 if name == "cifar10" else 100)).astype(np.uint8)
    if name == "cifar10":
        d = root / "cifar-10-batches-bin"
        d.mkdir()
        for i in range(1, 6):
            sl = slice((i - 1) * n // 5, i * n // 5)
            write_cifar_binary(d / f"data_batch_{i}.bin", images[sl], labels[sl])
        write_cifar_binary(d / "test_batch.bin", images[:4], labels[:4])
        (d / "batches.meta.txt").write_text("\n".join(f"class{i}" for i in range(10)) + "\n\n")
    else:
        d = root / "cifar-100-binary"
        d.mkdir()
        coarse = (labels // 5).astype(np.uint8)
        write_cifar_binary(d / "train.bin", images, labels, coarse)
        write_cifar_binary(d / "test.bin", images[:4], labels[:4], coarse[:4])
    return images, labels


@pytest.mark.parametrize("name", ["cifar10", "cifar100"])
def test_cifar_binary_format(tmp_path, name):
    images, labels = _cifar_fixture(tmp_path, name, 10)
    train = load_dataset(name, "train", tmp_path)  # the parent directory is accepted
    assert torch.equal(train.images, torch.from_numpy(images))  # planes R, G, B in order
    assert torch.equal(train.labels, torch.from_numpy(labels.astype(np.int64)))  # fine labels
    assert train.shape == (3, 32, 32)
    assert train.num_classes == (10 if name == "cifar10" else 100)
    test = load_dataset(
        name,
        "test",
        tmp_path / ("cifar-10-batches-bin" if name == "cifar10" else "cifar-100-binary"),
    )
    assert len(test) == 4
    if name == "cifar10":
        assert train.classes[3] == "class3"


def test_truncated_cifar_record_is_a_format_error(tmp_path):
    _cifar_fixture(tmp_path, "cifar10", 10)
    path = tmp_path / "cifar-10-batches-bin" / "test_batch.bin"
    path.write_bytes(path.read_bytes()[:-7])
    with pytest.raises(DatasetFormatError, match="3073-byte record"):
        load_dataset("cifar10", "test", tmp_path)


def _toy(n=50, c=1, size=8):
    g = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (n, c, size, size), generator=g, dtype=torch.uint8)
    return ImageSet("toy", images, torch.arange(n) % 10, tuple("abcdefghij"))


def test_validation_split_is_disjoint_seeded_and_sized():
    data = _toy(50)
    train, val = split_validation(data, 10, seed=3)
    assert val is not None and len(train) == 40 and len(val) == 10
    rows = {tuple(x.flatten().tolist()) for x in train.images}
    assert not rows & {tuple(x.flatten().tolist()) for x in val.images}
    again = split_validation(data, 10, seed=3)[1]
    assert again is not None and torch.equal(val.images, again.images)
    assert split_validation(data, 0, seed=3) == (data, None)


def test_channel_stats_match_numpy():
    data = _toy(30, c=3)
    mean, std = channel_stats(data)
    x = data.images.numpy().astype(np.float64) / 255
    assert np.allclose(mean, x.mean(axis=(0, 2, 3)), atol=1e-6)
    assert np.allclose(std, x.std(axis=(0, 2, 3)), atol=1e-6)


def test_flip_and_crop():
    x = _toy(16).images
    flipped = augment(x, Augment(flip=True), torch.Generator().manual_seed(0))
    is_flip = [torch.equal(f, o.flip(2)) for f, o in zip(flipped, x, strict=True)]
    is_same = [torch.equal(f, o) for f, o in zip(flipped, x, strict=True)]
    assert all(a or b for a, b in zip(is_flip, is_same, strict=True)) and any(is_flip)
    assert not all(is_flip)
    cropped = augment(x, Augment(flip=False, crop_pad=2), torch.Generator().manual_seed(1))
    assert cropped.shape == x.shape
    padded = torch.nn.functional.pad(x, (2, 2, 2, 2))
    for c, p in zip(cropped, padded, strict=True):  # every crop is a window of the padded image
        windows = [p[:, i : i + 8, j : j + 8] for i in range(5) for j in range(5)]
        assert any(torch.equal(c, w) for w in windows)


def test_batches_cover_each_example_once_and_resume_mid_epoch():
    data = _toy(50)
    assert steps_per_epoch(50, 16) == 4 and steps_per_epoch(49, 16) == 3
    assert steps_per_epoch(33, 16) == 2  # a 1-example remainder is dropped
    batches = list(train_batches(data, 16, seed=0, epoch=2, aug=Augment(flip=False)))
    seen = torch.cat([y for _, _, y in batches])
    assert len(seen) == 50 and sorted(seen.tolist()) == sorted(data.labels.tolist())
    x0 = batches[0][1]
    assert x0.dtype == torch.float32 and float(x0.min()) >= 0 and float(x0.max()) <= 1
    aug = Augment(flip=True, crop_pad=1)
    full = list(train_batches(data, 16, seed=0, epoch=1, aug=aug))
    tail = list(train_batches(data, 16, seed=0, epoch=1, aug=aug, start_step=2))
    assert [s for s, _, _ in tail] == [2, 3]
    for (s1, x1, y1), (s2, x2, y2) in zip(full[2:], tail, strict=True):
        assert s1 == s2 and torch.equal(x1, x2) and torch.equal(y1, y2)
    other = list(train_batches(data, 16, seed=0, epoch=2, aug=aug))
    assert not torch.equal(full[0][2], other[0][2])  # a new order every epoch


@pytest.mark.data
def test_fashion_mnist_from_the_debian_package():
    train = load_dataset("fashion-mnist", "train")
    test = load_dataset("fashion-mnist", "test")
    assert train.images.shape == (60000, 1, 28, 28) and len(test) == 10000
    assert train.classes[0] == "T-shirt/top" and train.num_classes == 10
    mean, std = channel_stats(train)
    assert abs(mean[0] - 0.2860) < 1e-3 and abs(std[0] - 0.3530) < 1e-3
