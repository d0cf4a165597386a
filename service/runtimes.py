"""Runtimes that execute a materialized task on a batch: PyTorch (inference mode)
or ONNX Runtime (the task exported with masks folded in; CUDA provider on GPU)."""

from __future__ import annotations

from typing import Any, Protocol

import numpy as np
import torch

from pemn.export import INPUT_NAME, OUTPUT_NAME, export_onnx, onnx_session
from pemn.materialize import Task

__all__ = ["OnnxRunner", "Runner", "TorchRunner", "make_runner"]


class Runner(Protocol):
    name: str
    nbytes: int  # bytes the runner holds beyond the task (e.g. an ONNX session's weights)

    def __call__(self, x: np.ndarray) -> np.ndarray:  # (B, C, H, W) float32 -> (B, K) float32
        ...


class TorchRunner:
    name = "torch"
    nbytes = 0

    def __init__(self, task: Task) -> None:
        self.task = task

    def __call__(self, x: np.ndarray) -> np.ndarray:
        with torch.inference_mode():
            out = self.task.module(torch.from_numpy(x).to(self.task.device))
        return out.float().cpu().numpy()


class OnnxRunner:
    name = "onnx"

    def __init__(self, task: Task, threads: int | None = None) -> None:
        model = export_onnx(task.module, tuple(task.input.shape))  # type: ignore[arg-type]
        self.nbytes = len(model)
        self.session: Any = onnx_session(model, task.device, threads)

    def __call__(self, x: np.ndarray) -> np.ndarray:
        return np.asarray(self.session.run([OUTPUT_NAME], {INPUT_NAME: x})[0], dtype=np.float32)


def make_runner(task: Task, runtime: str, threads: int | None = None) -> Runner:
    if runtime == "onnx":
        return OnnxRunner(task, threads)
    return TorchRunner(task)
