"""The trainer's file output: every file it writes appears whole or not at all
(``pemn.files.atomic_write``); a path that cannot be written is an ``OutputError``
naming it, checked early (``check_writable``) before a long run."""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any

from pemn.files import atomic_write
from trainer.errors import OutputError

__all__ = ["append_jsonl", "atomic_write_bytes", "atomic_write_json", "check_writable"]


def check_writable(path: Path) -> None:
    """Raise ``OutputError`` unless a file can be created at ``path`` (checked early,
    before a long run, by creating and removing a temporary file beside it)."""
    parent = path.parent if str(path.parent) else Path(".")
    if path.is_dir():
        raise OutputError(f"cannot write {path}: it is a directory")
    if not parent.is_dir():
        raise OutputError(f"cannot write {path}: directory {parent} does not exist")
    try:
        fd, tmp = tempfile.mkstemp(dir=parent, prefix=f".{path.name}.", suffix=".check")
    except OSError as exc:
        raise OutputError(f"cannot write {path}: {exc.strerror or exc}") from None
    os.close(fd)
    os.unlink(tmp)


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` atomically (temporary file, fsync, rename)."""
    check_writable(path)
    try:
        atomic_write(path, data)
    except OSError as exc:
        raise OutputError(f"cannot write {path}: {exc.strerror or exc}") from None


def atomic_write_json(path: Path, value: Any) -> None:
    """``atomic_write_bytes`` of ``value`` as indented JSON with a final newline."""
    atomic_write_bytes(path, (json.dumps(value, indent=2, sort_keys=False) + "\n").encode())


def append_jsonl(path: Path, record: dict[str, Any]) -> None:
    """Append one JSON line to ``path`` (a log: appends, never atomic renames)."""
    try:
        with path.open("a") as f:
            f.write(json.dumps(record) + "\n")
    except OSError as exc:
        raise OutputError(f"cannot write {path}: {exc.strerror or exc}") from None
