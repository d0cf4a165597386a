"""Checkpoints without pickle: one safetensors file per run (``checkpoint.safetensors``).

Tensors: ``model.<state_dict key>`` (scores, fixed weights, norm parameters and
running statistics), ``optim.<param index>.<key>`` (AdamW's ``exp_avg``,
``exp_avg_sq``, ``step``), ``rng.cpu`` and ``rng.cuda.<i>`` (torch RNG states, uint8).
The rest is JSON in the safetensors metadata under ``trainer``: format version,
position (epoch, step in epoch, global step), the full config, AdamW's param groups,
the grad scaler's state, and the loop's running counters. Model, optimizer and
counters live in one file written atomically, so they can never disagree.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load as st_load
from safetensors.torch import save as st_save
from torch import nn

from trainer.errors import CheckpointError
from trainer.io import atomic_write_bytes

__all__ = ["CHECKPOINT_NAME", "CheckpointState", "load_checkpoint", "save_checkpoint"]

CHECKPOINT_NAME = "checkpoint.safetensors"
_FORMAT = "pemn-trainer-checkpoint/1"


@dataclass
class CheckpointState:
    """Where a run is and everything non-tensor it needs to continue exactly."""

    epoch: int  # the epoch in progress (== epochs when training is finished)
    step: int  # steps of that epoch already taken
    global_step: int  # steps taken in total
    config: dict[str, Any]  # TrainConfig.to_dict() of the run
    counters: dict[str, Any]  # the loop's running sums (loss, correct, seen, seconds, ...)
    scaler: dict[str, Any] | None = None  # GradScaler.state_dict() when mixed precision is on


def save_checkpoint(
    path: Path,
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    state: CheckpointState,
) -> None:
    """Write model + optimizer + RNG + ``state`` to ``path`` atomically."""
    tensors: dict[str, torch.Tensor] = {
        f"model.{k}": v.detach().to("cpu").contiguous() for k, v in model.state_dict().items()
    }
    opt = optimizer.state_dict()
    for index, entries in opt["state"].items():
        for key, value in entries.items():
            tensors[f"optim.{index}.{key}"] = torch.as_tensor(value).detach().to("cpu").contiguous()
    tensors["rng.cpu"] = torch.get_rng_state()
    if torch.cuda.is_available():
        for i, s in enumerate(torch.cuda.get_rng_state_all()):
            tensors[f"rng.cuda.{i}"] = s
    meta = {
        "format": _FORMAT,
        "epoch": state.epoch,
        "step": state.step,
        "global_step": state.global_step,
        "config": state.config,
        "counters": state.counters,
        "scaler": state.scaler,
        "param_groups": opt["param_groups"],
    }
    atomic_write_bytes(path, st_save(tensors, metadata={"trainer": json.dumps(meta)}))


def _read(path: Path) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    try:
        data = path.read_bytes()
        tensors = st_load(data)
        header_len = int.from_bytes(data[:8], "little")
        header = json.loads(data[8 : 8 + header_len])
        meta = json.loads(header["__metadata__"]["trainer"])
    except (OSError, SafetensorError, ValueError, KeyError, TypeError) as exc:
        raise CheckpointError(f"cannot read checkpoint {path}: {exc}") from None
    if meta.get("format") != _FORMAT:
        raise CheckpointError(f"{path} is not a trainer checkpoint ({meta.get('format')!r})")
    return tensors, meta


def load_checkpoint(
    path: Path, model: nn.Module | None = None, optimizer: torch.optim.Optimizer | None = None
) -> CheckpointState:
    """Read ``path``; load its tensors into ``model`` / ``optimizer`` when given and
    restore the torch RNG states. Returns the non-tensor state."""
    tensors, meta = _read(path)
    if model is not None:
        state = {k[len("model.") :]: v for k, v in tensors.items() if k.startswith("model.")}
        try:
            model.load_state_dict(state, strict=True)
        except RuntimeError as exc:
            raise CheckpointError(f"checkpoint {path} does not fit the model: {exc}") from None
    if optimizer is not None:
        per_param: dict[int, dict[str, torch.Tensor]] = {}
        for k, v in tensors.items():
            if k.startswith("optim."):
                _, index, key = k.split(".", 2)
                per_param.setdefault(int(index), {})[key] = v
        optimizer.load_state_dict({"state": per_param, "param_groups": meta["param_groups"]})
        torch.set_rng_state(tensors["rng.cpu"])
        keys = [f"rng.cuda.{i}" for i in range(torch.cuda.device_count())]
        if torch.cuda.is_available() and all(k in tensors for k in keys):
            torch.cuda.set_rng_state_all([tensors[k] for k in keys])
    return CheckpointState(
        epoch=meta["epoch"],
        step=meta["step"],
        global_step=meta["global_step"],
        config=meta["config"],
        counters=meta["counters"],
        scaler=meta.get("scaler"),
    )
