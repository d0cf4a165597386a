"""Expected failures of the trainer: each is one clear sentence for the user.

The CLI prints ``error: <message>`` and exits non-zero for every ``TrainerError``
(and for the core library's ``ValueError``-based parameter errors); anything else
is a bug and keeps its traceback.
"""

from __future__ import annotations

__all__ = [
    "CheckpointError",
    "ConfigError",
    "DatasetFormatError",
    "DatasetNotFoundError",
    "OutputError",
    "PublishError",
    "TrainerError",
]


class TrainerError(Exception):
    """Base class: an expected failure with a one-sentence message."""

    exit_code = 2


class ConfigError(TrainerError, ValueError):
    """A flag or config value is invalid or incompatible with another one."""


class DatasetNotFoundError(TrainerError, FileNotFoundError):
    """A dataset file is missing; the message says where we looked and how to install it."""


class DatasetFormatError(TrainerError, ValueError):
    """A dataset file exists but is not in the expected format."""


class CheckpointError(TrainerError):
    """A checkpoint is missing, unreadable, or belongs to a different config."""


class OutputError(TrainerError, OSError):
    """An output path cannot be written."""


class PublishError(TrainerError):
    """The publish target is unreachable or refused the bundle."""
