"""Atomic file output: a file written here appears whole or not at all.

The bytes go to a temporary file in the destination's directory (``.<name>.*.tmp``),
get the mode ``open()`` would give (0666 less the umask), are fsynced, and the file
is renamed over the destination (``os.replace``, atomic on POSIX); then the
directory is fsynced so that the rename survives a crash (where the filesystem
allows). On any failure the temporary file is removed and the error propagates.
Standard library only (no torch), for every part of the project.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from pathlib import Path

__all__ = ["atomic_write"]


def _umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def atomic_write(path: str | os.PathLike[str], data: bytes) -> None:
    """Write ``data`` to ``path`` atomically; ``OSError`` when it cannot be written."""
    path = Path(path)
    parent = path.parent if str(path.parent) else Path(".")
    fd, tmp = tempfile.mkstemp(dir=parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        os.fchmod(fd, 0o666 & ~_umask())  # mkstemp's 0600 -> what open() would give
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    with contextlib.suppress(OSError):  # make the rename durable; not all filesystems allow it
        dir_fd = os.open(parent, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)
