"""Knowledge distillation: a dense teacher's softened logits as a second target.

The student (a PEMN score model) learns from the labels and from a trained dense
network of the same inputs and classes (Hinton et al., 2015, "Distilling the
Knowledge in a Neural Network")::

    loss = (1 - w) * CE(student, labels; label smoothing)
         +      w  * T^2 * KL(softmax(teacher / T) || softmax(student / T))

with ``w = --distill-weight`` and ``T = --distill-temperature`` (``T^2`` keeps the
gradient scale of the soft term independent of ``T``). The teacher runs in eval mode,
without gradients, on the same augmented batch as the student (online: no logits are
cached, so flips and crops stay exact), normalised with its own recorded statistics.
It is only used in training: the bundle is the same size with or without it.

The teacher is a dense file written by this trainer (``--strategy dense --out
x.safetensors``): a safetensors state dict with a JSON manifest in its metadata. It is
read with safetensors (no pickle) and checked against the run before any data is read.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from safetensors.torch import load as st_load
from safetensors.torch import save as st_save
from torch import nn

from pemn.archs import create_model
from pemn.normalize import Normalize
from trainer.errors import ConfigError

__all__ = [
    "DENSE_FORMAT",
    "Teacher",
    "dense_bytes",
    "distill_loss",
    "load_teacher",
    "read_dense",
    "teacher_manifest",
]

DENSE_FORMAT = "pemn-trainer-dense/1"
_MAX_HEADER = 1 << 20  # a dense file's JSON header (tensor table + manifest)


def dense_bytes(model: nn.Module, manifest: dict[str, Any]) -> bytes:
    """The dense file: ``model``'s state dict with ``manifest`` as JSON metadata."""
    tensors = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    return st_save(tensors, metadata={"manifest": json.dumps(manifest)})


def _manifest_of(data: bytes, where: str) -> dict[str, Any]:
    if len(data) < 8:
        raise ConfigError(f"{where} is not a dense model file (too short)")
    size = int.from_bytes(data[:8], "little")
    if size > min(_MAX_HEADER, len(data) - 8):
        raise ConfigError(f"{where} is not a dense model file (header of {size:,} bytes)")
    try:
        header = json.loads(data[8 : 8 + size])
        manifest = json.loads(header["__metadata__"]["manifest"])
    except (ValueError, KeyError, TypeError):
        raise ConfigError(f"{where} is not a dense model file (no manifest)") from None
    if not isinstance(manifest, dict) or manifest.get("format") != DENSE_FORMAT:
        got = manifest.get("format") if isinstance(manifest, dict) else None
        raise ConfigError(
            f"{where} is not a dense model file (format {got!r}, need {DENSE_FORMAT})"
        )
    return manifest


def read_dense(data: bytes, where: str = "the dense file") -> tuple[nn.Module, dict[str, Any]]:
    """(the model in eval mode, its manifest) of a dense file's bytes."""
    manifest = _manifest_of(data, where)
    try:
        model = create_model(manifest["arch"], **manifest["config"])
        model.load_state_dict(st_load(data), strict=True)
    except (KeyError, TypeError, ValueError, RuntimeError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ConfigError(f"{where} cannot be loaded: {first}") from None
    return model.eval(), manifest


def teacher_manifest(path: str, shape: tuple[int, ...], num_classes: int) -> dict[str, Any]:
    """The manifest of teacher file ``path``, checked against the run's inputs ``shape``
    (C, H, W) and ``num_classes``; reads the header only (cheap, before any data)."""
    where = f"--teacher {path}"
    p = Path(path).expanduser()
    if not p.is_file():
        raise ConfigError(f"{where}: no such file")
    with p.open("rb") as f:
        head = f.read(8)
        size = int.from_bytes(head, "little") if len(head) == 8 else 0
        manifest = _manifest_of(head + f.read(min(size, _MAX_HEADER)), where)
    try:
        t_shape = tuple(int(v) for v in manifest["input"]["shape"])
        t_classes = len(manifest["labels"])
    except (KeyError, TypeError, ValueError):
        raise ConfigError(f"{where}: the manifest has no input shape or labels") from None
    if t_shape != tuple(shape) or t_classes != num_classes:
        raise ConfigError(
            f"{where} takes inputs {t_shape} with {t_classes} classes; "
            f"this run has {tuple(shape)} with {num_classes}"
        )
    return manifest


@dataclass
class Teacher:
    """A dense network whose logits the student learns from."""

    model: nn.Module
    normalize: Normalize
    labels: list[str]
    record: dict[str, Any]  # what the run's result and the bundle's provenance say of it

    @torch.no_grad()
    def logits(self, pixels: torch.Tensor, channels_last: bool) -> torch.Tensor:
        """(B, classes) of pixels (B, C, H, W) in [0, 1], the student's augmented batch."""
        x = self.normalize(pixels)
        if channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        return self.model(x)


def load_teacher(path: str, device: torch.device, labels: list[str]) -> Teacher:
    """The teacher of file ``path`` on ``device``; its labels must be the run's."""
    p = Path(path).expanduser()
    data = p.read_bytes()
    model, manifest = read_dense(data, f"--teacher {path}")
    if list(manifest["labels"]) != list(labels):
        raise ConfigError(f"--teacher {path} has other labels than the run's dataset")
    spec = manifest["input"]
    record = {
        "file": p.name,
        "sha256": hashlib.sha256(data).hexdigest(),
        "arch": manifest["arch"],
        "test_accuracy": manifest.get("metrics", {}).get("test_accuracy"),
    }
    for prm in model.parameters():
        prm.requires_grad_(False)
    return Teacher(
        model.to(device), Normalize(spec["mean"], spec["std"], device), list(labels), record
    )


def distill_loss(
    student: torch.Tensor,
    labels: torch.Tensor,
    teacher: torch.Tensor | None,
    *,
    weight: float,
    temperature: float,
    label_smoothing: float = 0.0,
) -> torch.Tensor:
    """The training loss of student logits (B, K) against labels (B,) and, when given,
    teacher logits (B, K); see the module docstring."""
    hard = F.cross_entropy(student, labels, label_smoothing=label_smoothing)
    if teacher is None or weight == 0.0:
        return hard
    t = temperature
    soft = F.kl_div(
        F.log_softmax(student.float() / t, dim=1),
        F.log_softmax(teacher.float() / t, dim=1),
        reduction="batchmean",
        log_target=True,
    )
    return (1.0 - weight) * hard + weight * (t * t) * soft
