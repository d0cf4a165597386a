"""The training loop: data -> model -> AdamW steps with the reference schedule ->
per-epoch evaluation -> checkpoints, metrics log, curves, ``result.json``.

``train`` reads top to bottom: build the run, start or resume its state, then per
epoch ``_train_epoch`` (``_step`` per batch), ``_evaluate``, ``_save``. A run lives
in its directory::

    checkpoint.safetensors   model + optimizer + RNG + RunState (trainer.checkpoint)
    metrics.jsonl            train records every log_every steps, one per epoch
    curves.png               loss and accuracy against epochs
    result.json              written when training finishes: final-epoch metrics

Resuming (``resume=True``) continues from the checkpoint exactly: the model,
optimizer, state and RNG are restored, and batches depend only on
(seed, epoch, step), so a resumed run ends in the same state as an uninterrupted one.
SIGINT/SIGTERM stop the loop after the current step with a checkpoint.
"""

from __future__ import annotations

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
from torch import nn
from tqdm import tqdm

from pemn.devices import resolve_device
from pemn.layers import layer_specs
from pemn.normalize import Normalize
from pemn.prototype import stats
from trainer.checkpoint import CHECKPOINT_NAME, CheckpointState, load_checkpoint, save_checkpoint
from trainer.config import TrainConfig
from trainer.data import Augment, ImageSet, steps_per_epoch, train_batches
from trainer.errors import CheckpointError, TrainerError
from trainer.io import atomic_write_json
from trainer.metrics import MetricsLog, plot_curves
from trainer.model import build_model, trainable_parameters
from trainer.run import RunData, accuracy, load_run_data, predict, preflight
from trainer.schedule import lr_at
from trainer.state import RunState, Tally
from trainer.teacher import Teacher, distill_loss, load_teacher

__all__ = ["Interrupted", "train"]


class Interrupted(TrainerError):
    """Training stopped early (signal or ``stop_after``) with a checkpoint saved."""

    exit_code = 130


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


@dataclass
class _Run:
    """The fixed parts of a run, built once from its config."""

    cfg: TrainConfig
    run_dir: Path
    device: torch.device
    data: RunData
    model: nn.Module
    optimizer: torch.optim.Optimizer
    scaler: torch.amp.GradScaler
    use_amp: bool  # float16 autocast + grad scaling: cfg.amp on CUDA
    normalize: Normalize
    aug: Augment
    steps_per_epoch: int
    total_steps: int
    log: MetricsLog
    teacher: Teacher | None  # --teacher: distillation (trainer.teacher)

    @property
    def checkpoint_path(self) -> Path:
        return self.run_dir / CHECKPOINT_NAME


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
    run = _build(cfg, run_dir, resume)
    state = _start(run, resume, echo)
    show = sys.stderr.isatty() if progress is None else progress
    stop = _StopFlag()

    def stopped() -> bool:  # a signal came, or the step ``stop_after`` is done
        return stop.signal is not None or stop_after == state.global_step

    run.model.train()
    with stop.installed():
        while state.epoch < cfg.epochs:
            _train_epoch(run, state, stopped, show)
            summary = _evaluate(run, state)
            run.log.write(summary)
            echo(_epoch_line(cfg, summary))
            state.next_epoch(summary)
            _save(run, state)
            plot_curves(
                run.log.records(), run_dir / "curves.png", f"{cfg.dataset} {cfg.arch} {cfg.label()}"
            )
            if stopped() and state.epoch < cfg.epochs:
                raise Interrupted(
                    f"stopped after epoch {state.epoch}; checkpoint saved in {run_dir}, "
                    "rerun with --resume to continue"
                )
    return _finish(run, state)


def _build(cfg: TrainConfig, run_dir: Path, resume: bool) -> _Run:
    device = resolve_device(cfg.device)
    if cfg.threads is not None:
        torch.set_num_threads(cfg.threads)
    run_dir.mkdir(parents=True, exist_ok=True)
    if (run_dir / CHECKPOINT_NAME).exists() and not resume:
        raise CheckpointError(
            f"{run_dir} already holds a checkpoint; pass --resume to continue it "
            "or choose another --run-dir"
        )
    data = load_run_data(cfg)
    model = build_model(cfg, data.arch_config).to(device)
    if cfg.channels_last:
        model.to(memory_format=torch.channels_last)  # type: ignore[call-overload]
    optimizer = torch.optim.AdamW(
        trainable_parameters(model), lr=0.0, weight_decay=cfg.weight_decay
    )
    use_amp = cfg.amp and device.type == "cuda"
    spe = steps_per_epoch(len(data.train), cfg.batch_size)
    return _Run(
        cfg=cfg,
        run_dir=run_dir,
        device=device,
        data=data,
        model=model,
        optimizer=optimizer,
        scaler=torch.amp.GradScaler("cuda", enabled=use_amp),
        use_amp=use_amp,
        normalize=Normalize(data.mean, data.std, device),
        aug=Augment(flip=cfg.flip, crop_pad=cfg.crop_pad),
        steps_per_epoch=spe,
        total_steps=spe * cfg.epochs,
        log=MetricsLog(run_dir / "metrics.jsonl"),
        teacher=None
        if cfg.teacher is None
        else load_teacher(cfg.teacher, device, list(data.train.classes)),
    )


def _start(run: _Run, resume: bool, echo: Callable[[str], None]) -> RunState:
    """A fresh state (seeding torch), or the checkpoint's when resuming one."""
    if not (resume and run.checkpoint_path.exists()):
        torch.manual_seed(run.cfg.seed)
        run.log.reset()
        return RunState()
    saved = load_checkpoint(run.checkpoint_path, run.model, run.optimizer)
    before, now = TrainConfig.from_dict(saved.config).identity(), run.cfg.identity()
    if before != now:
        diff = sorted(k for k in before if before[k] != now[k])
        raise CheckpointError(
            f"the checkpoint in {run.run_dir} was made with a different config ({', '.join(diff)})"
        )
    if saved.scaler and run.use_amp:
        run.scaler.load_state_dict(saved.scaler)
    state = RunState.restore(saved.epoch, saved.step, saved.global_step, saved.counters)
    run.log.rewind(state.global_step)
    echo(
        f"resuming {run.run_dir} at epoch {state.epoch + 1}, step {state.step} "
        f"({state.global_step}/{run.total_steps})"
    )
    return state


def _train_epoch(run: _Run, state: RunState, stopped: Callable[[], bool], show: bool) -> None:
    """The rest of epoch ``state.epoch``: a step per batch, a metrics record every
    ``log_every`` steps, mid-epoch checkpoints; raises ``Interrupted`` when stopped."""
    cfg, spe = run.cfg, run.steps_per_epoch
    bar = tqdm(
        total=spe,
        initial=state.step,
        desc=f"epoch {state.epoch + 1}/{cfg.epochs}",
        disable=not show,
        dynamic_ncols=True,
        leave=True,
    )
    tick = time.perf_counter()
    batches = train_batches(
        run.data.train, cfg.batch_size, cfg.seed, state.epoch, run.aug, state.step
    )
    for step, x, y in batches:
        lr = lr_at(
            state.global_step, run.total_steps, cfg.lr_max, cfg.warmup, cfg.decay_end, cfg.lr_floor
        )
        loss, correct = _step(run, x, y, lr)
        if not math.isfinite(loss):
            raise TrainerError(
                f"the loss became {loss} at step {state.global_step}; lower --lr-max"
            )
        state.epoch_tally.add(loss, correct, len(y))
        state.window.add(loss, correct, len(y))
        state.global_step += 1
        state.step = step + 1
        bar.update(1)
        if state.global_step % cfg.log_every == 0:
            w = state.window
            run.log.write(
                {
                    "kind": "train",
                    "step": state.global_step,
                    "epoch": round(state.global_step / spe, 4),
                    "lr": lr,
                    "loss": w.mean_loss,
                    "accuracy": w.accuracy,
                }
            )
            bar.set_postfix(loss=f"{w.mean_loss:.3f}", acc=f"{w.accuracy:.3f}")
            state.window = Tally()
        interrupted = stopped()
        periodic = cfg.checkpoint_every and state.global_step % cfg.checkpoint_every == 0
        if (interrupted or periodic) and state.step < spe:
            now = time.perf_counter()
            state.epoch_seconds += now - tick
            tick = now
            _save(run, state)
        if interrupted and state.step < spe:
            bar.close()
            raise Interrupted(
                f"stopped at step {state.global_step}/{run.total_steps}; checkpoint saved in "
                f"{run.run_dir}, rerun with --resume to continue"
            )
    state.epoch_seconds += time.perf_counter() - tick
    bar.close()


def _step(run: _Run, x: torch.Tensor, y: torch.Tensor, lr: float) -> tuple[float, int]:
    """One AdamW step on uint8-derived pixels ``x`` (B, C, H, W) in [0, 1] and labels
    ``y`` (B,); returns (mean loss, correct predictions)."""
    for group in run.optimizer.param_groups:
        group["lr"] = lr
    cfg = run.cfg
    pixels = x.to(run.device, non_blocking=True)  # (B, C, H, W) in [0, 1], augmented
    x = run.normalize(pixels)
    if cfg.channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    y = y.to(run.device, non_blocking=True)  # (B,)
    with torch.autocast(run.device.type, dtype=torch.float16, enabled=run.use_amp):
        soft = None if run.teacher is None else run.teacher.logits(pixels, cfg.channels_last)
        logits = run.model(x)  # (B, num_classes)
        loss = distill_loss(
            logits,
            y,
            soft,
            weight=cfg.distill_weight,
            temperature=cfg.distill_temperature,
            label_smoothing=cfg.label_smoothing,
        )
    run.optimizer.zero_grad(set_to_none=True)
    run.scaler.scale(loss).backward()
    run.scaler.step(run.optimizer)
    run.scaler.update()
    return float(loss.detach()), int((logits.detach().argmax(dim=1) == y).sum())


def _split_accuracy(run: _Run, split: ImageSet) -> float:
    cfg = run.cfg
    pred = predict(
        run.model, split, run.device, cfg.eval_batch_size, run.normalize, cfg.channels_last
    )
    return accuracy(pred, split)


def _evaluate(run: _Run, state: RunState) -> dict[str, Any]:
    """The finished epoch's summary: train loss/accuracy, test (and val) accuracy."""
    val = run.data.val
    return {
        "kind": "epoch",
        "step": state.global_step,
        "epoch": state.epoch + 1,
        "train_loss": state.epoch_tally.mean_loss,
        "train_accuracy": state.epoch_tally.accuracy,
        "test_accuracy": _split_accuracy(run, run.data.test),
        "val_accuracy": None if val is None else _split_accuracy(run, val),
        "seconds": round(state.epoch_seconds, 2),
    }


def _epoch_line(cfg: TrainConfig, s: dict[str, Any]) -> str:
    val = "" if s["val_accuracy"] is None else f", val {100 * s['val_accuracy']:.2f}%"
    return (
        f"epoch {s['epoch']}/{cfg.epochs}: train loss {s['train_loss']:.4f}, "
        f"train {100 * s['train_accuracy']:.2f}%, test {100 * s['test_accuracy']:.2f}%"
        f"{val}, {s['seconds']:.1f}s"
    )


def _save(run: _Run, state: RunState) -> None:
    save_checkpoint(
        run.checkpoint_path,
        run.model,
        run.optimizer,
        CheckpointState(
            epoch=state.epoch,
            step=state.step,
            global_step=state.global_step,
            config=run.cfg.to_dict(),
            counters=state.counters(),
            scaler=run.scaler.state_dict() if run.use_amp else None,
        ),
    )


def _prototype_stats(cfg: TrainConfig, model: nn.Module) -> dict[str, Any]:
    s = stats(layer_specs(model), cfg.pemn_strategy())
    if cfg.dense:  # every weight is a float32 value: no compression
        return {"N": s.n, "M": s.m, "U": s.n, "paper_compression": 0.0}
    return {"N": s.n, "M": s.m, "U": s.u, "paper_compression": s.compression}


def _finish(run: _Run, state: RunState) -> dict[str, Any]:
    """The run's result (final epoch's metrics), written to ``result.json``."""
    cfg, data, last = run.cfg, run.data, state.epochs[-1]
    result = {
        "label": cfg.label(),
        "config": cfg.to_dict(),
        "arch_config": data.arch_config,
        "input": {"shape": list(data.train.shape), "mean": data.mean, "std": data.std},
        "classes": list(data.train.classes),
        "stats": _prototype_stats(cfg, run.model),
        "steps": state.global_step,
        "test_accuracy": last["test_accuracy"],  # final epoch, score model
        "val_accuracy": last["val_accuracy"],
        "seconds_per_epoch": sum(e["seconds"] for e in state.epochs) / cfg.epochs,
        "epochs": state.epochs,
        "teacher": None if run.teacher is None else run.teacher.record,
    }
    atomic_write_json(run.run_dir / "result.json", result)
    return result
