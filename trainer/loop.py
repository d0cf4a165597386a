"""The training loop: data -> model -> AdamW steps with the reference schedule ->
per-epoch evaluation -> checkpoints, metrics log, curves, ``result.json``.

A run lives in its directory::

    checkpoint.safetensors   model + optimizer + RNG + position (trainer.checkpoint)
    metrics.jsonl            train records every log_every steps, one per epoch
    curves.png               loss and accuracy against epochs
    result.json              written when training finishes: final-epoch metrics

Resuming (``resume=True``) continues from the checkpoint exactly: the model,
optimizer, counters and RNG are restored, and batches depend only on
(seed, epoch, step), so a resumed run ends in the same state as an uninterrupted one.
SIGINT/SIGTERM stop the loop after the current step with a checkpoint.
"""

from __future__ import annotations

import json
import math
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from tqdm import tqdm

from pemn.prototype import layer_specs, stats
from trainer.checkpoint import CHECKPOINT_NAME, CheckpointState, load_checkpoint, save_checkpoint
from trainer.config import TrainConfig
from trainer.data import (
    DATASET_SHAPES,
    Augment,
    ImageSet,
    Normalize,
    channel_stats,
    folder_path,
    folder_shape,
    load_dataset,
    load_folder,
    split_validation,
    steps_per_epoch,
    train_batches,
)
from trainer.errors import CheckpointError, ConfigError, TrainerError
from trainer.io import atomic_write_json
from trainer.metrics import MetricsLog, plot_curves
from trainer.model import build_model, model_config, trainable_parameters
from trainer.schedule import lr_at

__all__ = [
    "Interrupted",
    "RunData",
    "load_run_data",
    "predict",
    "preflight",
    "read_result",
    "resolve_device",
    "train",
]


class Interrupted(TrainerError):
    """Training stopped early (signal or ``stop_after``) with a checkpoint saved."""

    exit_code = 130


@dataclass
class RunData:
    """Everything data-dependent a run needs, derived from the config alone."""

    train: ImageSet
    val: ImageSet | None
    test: ImageSet
    mean: tuple[float, ...]  # per channel, of the training split's pixels in [0, 1]
    std: tuple[float, ...]
    arch_config: dict[str, Any]  # full architecture config (in_channels etc. included)


def load_run_data(cfg: TrainConfig) -> RunData:
    """Load the datasets, hold out the validation split, compute normalisation stats."""
    directory = Path(cfg.data_dir) if cfg.data_dir else None
    root = folder_path(cfg.dataset)
    if root is not None:
        full, test = load_folder(
            root,
            image_size=cfg.image_size,
            channels=cfg.channels,
            resize=cfg.resize,
            val_fraction=cfg.val_fraction,
            seed=cfg.seed,
        )
        full, test = full.subset(slice(0, cfg.train_limit)), test.subset(slice(0, cfg.test_limit))
    else:
        full = load_dataset(cfg.dataset, "train", directory, cfg.train_limit)
        test = load_dataset(cfg.dataset, "test", directory, cfg.test_limit)
    train, val = split_validation(full, cfg.val_size, cfg.seed)
    mean, std = channel_stats(train)
    return RunData(train, val, test, mean, std, model_config(cfg, train.shape, train.num_classes))


def preflight(cfg: TrainConfig) -> None:
    """The cheap checks, before any data is read: config values, device, and that the
    architecture takes the dataset's image shape (one forward pass)."""
    cfg.validate()
    resolve_device(cfg.device)
    root = folder_path(cfg.dataset)
    if root is not None:
        shape, num_classes = folder_shape(root, cfg.image_size, cfg.channels)
    else:
        shape, num_classes = DATASET_SHAPES[cfg.dataset]
    build_model(cfg, model_config(cfg, shape, num_classes))


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise ConfigError(f"unknown device {name!r}; use auto, cpu or cuda[:N]") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"device {name} requested but CUDA is not available")
    if device.type not in ("cpu", "cuda"):
        raise ConfigError(f"device {name!r} is not supported; use auto, cpu or cuda[:N]")
    return device


@torch.no_grad()
def predict(
    model: nn.Module,
    data: ImageSet,
    device: torch.device,
    batch_size: int,
    normalize: Normalize | None = None,
    channels_last: bool = False,
) -> torch.Tensor:
    """Predicted classes (N,) int64 of ``model`` in eval mode on ``data``'s pixels
    (normalised first when ``normalize`` is given)."""
    was_training = model.training
    model.eval()
    out = []
    for start in range(0, len(data), batch_size):
        x = data.pixels(slice(start, start + batch_size)).to(device)  # (B, C, H, W) in [0, 1]
        if normalize is not None:
            x = normalize(x)
        if channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        out.append(model(x).argmax(dim=1).cpu())
    model.train(was_training)
    return torch.cat(out)


def _accuracy(pred: torch.Tensor, data: ImageSet) -> float:
    return float((pred == data.labels).double().mean())


class _StopFlag:
    """Set by SIGINT/SIGTERM while installed (main thread only)."""

    def __init__(self) -> None:
        self.signal: int | None = None

    @contextmanager
    def installed(self) -> Iterator[_StopFlag]:
        if threading.current_thread() is not threading.main_thread():
            yield self
            return
        previous = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}

        def handler(signum: int, frame: object) -> None:
            self.signal = signum

        for s in previous:
            signal.signal(s, handler)
        try:
            yield self
        finally:
            for s, h in previous.items():
                signal.signal(s, h)


def _fresh_counters() -> dict[str, Any]:
    return {
        "window": {"loss": 0.0, "correct": 0, "seen": 0},
        "epoch": {"loss": 0.0, "correct": 0, "seen": 0, "seconds": 0.0},
        "epochs": [],  # one summary per finished epoch
    }


def _prototype_stats(cfg: TrainConfig, model: nn.Module) -> dict[str, Any]:
    specs = layer_specs(model)
    s = stats(specs, cfg.pemn_strategy())
    if cfg.dense:  # every weight is a float32 value: no compression
        return {"N": s.n, "M": s.m, "U": s.n, "paper_compression": 0.0}
    return {"N": s.n, "M": s.m, "U": s.u, "paper_compression": s.compression}


def train(
    cfg: TrainConfig,
    run_dir: Path,
    *,
    resume: bool = False,
    stop_after: int | None = None,
    progress: bool | None = None,
    echo: Callable[[str], None] = print,
) -> dict[str, Any]:
    """Train ``cfg`` in ``run_dir``; returns the result (also written to result.json).

    ``stop_after``: stop with a checkpoint once this many global steps are done
    (simulates an interruption). ``progress``: show a tqdm bar (default: stderr is a tty).
    """
    preflight(cfg)
    device = resolve_device(cfg.device)
    if cfg.threads is not None:
        torch.set_num_threads(cfg.threads)
    run_dir.mkdir(parents=True, exist_ok=True)
    ckpt_path = run_dir / CHECKPOINT_NAME
    if ckpt_path.exists() and not resume:
        raise CheckpointError(
            f"{run_dir} already holds a checkpoint; pass --resume to continue it "
            "or choose another --run-dir"
        )

    data = load_run_data(cfg)
    model = build_model(cfg, data.arch_config)
    model.to(device)
    if cfg.channels_last:
        model.to(memory_format=torch.channels_last)  # type: ignore[call-overload]
    optimizer = torch.optim.AdamW(
        trainable_parameters(model), lr=0.0, weight_decay=cfg.weight_decay
    )
    use_amp = cfg.amp and device.type == "cuda"
    scaler = torch.amp.GradScaler("cuda", enabled=use_amp)
    normalize = Normalize(data.mean, data.std, device)
    aug = Augment(flip=cfg.flip, crop_pad=cfg.crop_pad)
    spe = steps_per_epoch(len(data.train), cfg.batch_size)
    total = spe * cfg.epochs
    log = MetricsLog(run_dir / "metrics.jsonl")

    epoch, start_step, global_step, counters = 0, 0, 0, _fresh_counters()
    if resume and ckpt_path.exists():
        state = load_checkpoint(ckpt_path, model, optimizer)
        saved = TrainConfig.from_dict(state.config).identity()
        if saved != cfg.identity():
            diff = sorted(k for k in saved if saved[k] != cfg.identity()[k])
            raise CheckpointError(
                f"the checkpoint in {run_dir} was made with a different config ({', '.join(diff)})"
            )
        epoch, start_step, global_step, counters = (
            state.epoch,
            state.step,
            state.global_step,
            state.counters,
        )
        if state.scaler and use_amp:
            scaler.load_state_dict(state.scaler)
        log.rewind(global_step)
        echo(f"resuming {run_dir} at epoch {epoch + 1}, step {start_step} ({global_step}/{total})")
    else:
        torch.manual_seed(cfg.seed)
        log.reset()

    def checkpoint() -> None:
        save_checkpoint(
            ckpt_path,
            model,
            optimizer,
            CheckpointState(
                epoch=epoch,
                step=start_step,
                global_step=global_step,
                config=cfg.to_dict(),
                counters=counters,
                scaler=scaler.state_dict() if use_amp else None,
            ),
        )

    show = sys.stderr.isatty() if progress is None else progress
    stop = _StopFlag()
    model.train()
    with stop.installed():
        while epoch < cfg.epochs:
            bar = tqdm(
                total=spe,
                initial=start_step,
                desc=f"epoch {epoch + 1}/{cfg.epochs}",
                disable=not show,
                dynamic_ncols=True,
                leave=True,
            )
            ep = counters["epoch"]
            win = counters["window"]
            tick = time.perf_counter()
            for step, x, y in train_batches(
                data.train, cfg.batch_size, cfg.seed, epoch, aug, start_step
            ):
                lr = lr_at(global_step, total, cfg.lr_max, cfg.warmup, cfg.decay_end, cfg.lr_floor)
                for group in optimizer.param_groups:
                    group["lr"] = lr
                x = normalize(x.to(device, non_blocking=True))  # (B, C, H, W)
                if cfg.channels_last:
                    x = x.contiguous(memory_format=torch.channels_last)
                y = y.to(device, non_blocking=True)  # (B,)
                with torch.autocast(device.type, dtype=torch.float16, enabled=use_amp):
                    logits = model(x)  # (B, num_classes)
                    loss = F.cross_entropy(logits, y)
                optimizer.zero_grad(set_to_none=True)
                scaler.scale(loss).backward()
                scaler.step(optimizer)
                scaler.update()

                loss_value = float(loss.detach())
                if not math.isfinite(loss_value):
                    raise TrainerError(
                        f"the loss became {loss_value} at step {global_step}; lower --lr-max"
                    )
                correct = int((logits.detach().argmax(dim=1) == y).sum())
                for acc in (ep, win):
                    acc["loss"] += loss_value * len(y)
                    acc["correct"] += correct
                    acc["seen"] += len(y)
                global_step += 1
                start_step = step + 1
                bar.update(1)
                if global_step % cfg.log_every == 0:
                    record = {
                        "kind": "train",
                        "step": global_step,
                        "epoch": round(global_step / spe, 4),
                        "lr": lr,
                        "loss": win["loss"] / win["seen"],
                        "accuracy": win["correct"] / win["seen"],
                    }
                    log.write(record)
                    bar.set_postfix(loss=f"{record['loss']:.3f}", acc=f"{record['accuracy']:.3f}")
                    counters["window"] = win = {"loss": 0.0, "correct": 0, "seen": 0}
                interrupted = stop.signal is not None or stop_after == global_step
                periodic = cfg.checkpoint_every and global_step % cfg.checkpoint_every == 0
                if (interrupted or periodic) and start_step < spe:
                    ep["seconds"] += time.perf_counter() - tick
                    tick = time.perf_counter()
                    checkpoint()
                if interrupted and start_step < spe:
                    bar.close()
                    raise Interrupted(
                        f"stopped at step {global_step}/{total}; checkpoint saved in {run_dir}, "
                        "rerun with --resume to continue"
                    )
            ep["seconds"] += time.perf_counter() - tick
            bar.close()

            test_acc = _accuracy(
                predict(
                    model, data.test, device, cfg.eval_batch_size, normalize, cfg.channels_last
                ),
                data.test,
            )
            val_acc = None
            if data.val is not None:
                val_acc = _accuracy(
                    predict(
                        model, data.val, device, cfg.eval_batch_size, normalize, cfg.channels_last
                    ),
                    data.val,
                )
            summary = {
                "kind": "epoch",
                "step": global_step,
                "epoch": epoch + 1,
                "train_loss": ep["loss"] / ep["seen"],
                "train_accuracy": ep["correct"] / ep["seen"],
                "test_accuracy": test_acc,
                "val_accuracy": val_acc,
                "seconds": round(ep["seconds"], 2),
            }
            log.write(summary)
            counters["epochs"].append(summary)
            counters["epoch"] = {"loss": 0.0, "correct": 0, "seen": 0, "seconds": 0.0}
            val_text = "" if val_acc is None else f", val {100 * val_acc:.2f}%"
            echo(
                f"epoch {epoch + 1}/{cfg.epochs}: train loss {summary['train_loss']:.4f}, "
                f"train {100 * summary['train_accuracy']:.2f}%, test {100 * test_acc:.2f}%"
                f"{val_text}, {summary['seconds']:.1f}s"
            )
            epoch, start_step = epoch + 1, 0
            checkpoint()
            plot_curves(
                log.records(), run_dir / "curves.png", f"{cfg.dataset} {cfg.arch} {cfg.label()}"
            )
            if (stop.signal is not None or stop_after == global_step) and epoch < cfg.epochs:
                raise Interrupted(
                    f"stopped after epoch {epoch}; checkpoint saved in {run_dir}, "
                    "rerun with --resume to continue"
                )

    last = counters["epochs"][-1]
    result = {
        "label": cfg.label(),
        "config": cfg.to_dict(),
        "arch_config": data.arch_config,
        "input": {"shape": list(data.train.shape), "mean": data.mean, "std": data.std},
        "classes": list(data.train.classes),
        "stats": _prototype_stats(cfg, model),
        "steps": global_step,
        "test_accuracy": last["test_accuracy"],  # final epoch, score model
        "val_accuracy": last["val_accuracy"],
        "seconds_per_epoch": sum(e["seconds"] for e in counters["epochs"]) / cfg.epochs,
        "epochs": counters["epochs"],
    }
    atomic_write_json(run_dir / "result.json", result)
    return result


def read_result(run_dir: Path) -> dict[str, Any] | None:
    """``result.json`` of a finished run, or None."""
    path = run_dir / "result.json"
    return json.loads(path.read_text()) if path.exists() else None
