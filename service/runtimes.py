"""Runtimes that execute a materialized task on a batch: PyTorch (inference mode)
or ONNX Runtime (the task exported with masks folded in; CUDA provider on GPU).

Exporting a network to ONNX takes seconds (7-17 s for a ConvMixer-128/4 on a busy
2-core machine), but every task on a backbone has the same graph and differs only
in its weights. ``OnnxGraphs`` therefore exports once per backbone and input shape
and gives every further task the same graph with the task's tensors written into
the initializers named after its state dict keys (a few milliseconds). Each such
model is checked against the task's PyTorch module on a probe batch before it is
used; a mismatch (e.g. an exporter that folded a task tensor into a constant)
falls back to exporting that task on its own, so a task never runs on another
task's weights.
"""

from __future__ import annotations

import logging
import threading
from typing import Any, Protocol

import numpy as np
import torch

from pemn.export import INPUT_NAME, OUTPUT_NAME, export_onnx, onnx_session
from pemn.materialize import Task

__all__ = ["OnnxGraphs", "OnnxRunner", "Runner", "TorchRunner", "make_runner"]

log = logging.getLogger("service.runtimes")

# How close a re-weighted graph must match PyTorch on the probe batch.
_PARITY_ATOL = 1e-4


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


class OnnxGraphs:
    """Exported ONNX graphs, one per (backbone fingerprint, input shape), re-weighted
    per task. Thread-safe; a graph is exported once even when tasks of a new
    backbone load in parallel."""

    def __init__(self) -> None:
        self._graphs: dict[tuple[str, tuple[int, ...]], Any] = {}  # -> onnx.ModelProto
        self._locks: dict[tuple[str, tuple[int, ...]], threading.Lock] = {}
        self._guard = threading.Lock()
        self.exports = 0  # full exports done (the expensive path)

    def model(self, task: Task) -> tuple[bytes, bool]:
        """The serialized ONNX model of ``task`` and whether it was re-weighted from
        the backbone's graph (then it still needs ``check``)."""
        import onnx

        key = (task.fingerprint, tuple(task.input.shape))
        with self._guard:
            lock = self._locks.setdefault(key, threading.Lock())
        with lock:  # single-flight export per backbone
            graph = self._graphs.get(key)
            if graph is None:
                data = self.export(task)
                self._graphs[key] = onnx.load_from_string(data)
                return data, False
        reweighted = _reweight(graph, task.module.state_dict())
        return (reweighted, True) if reweighted is not None else (self.export(task), False)

    def export(self, task: Task) -> bytes:
        self.exports += 1
        return export_onnx(task.module, tuple(task.input.shape))  # type: ignore[arg-type]

    def drop_unused(self, fingerprints: set[str]) -> None:
        """Forget the graphs of backbones not in ``fingerprints``."""
        with self._guard:
            for key in [k for k in self._graphs if k[0] not in fingerprints]:
                del self._graphs[key]
                self._locks.pop(key, None)


def _reweight(graph: Any, state: dict[str, torch.Tensor]) -> bytes | None:
    """``graph`` with every float initializer named like a key of ``state`` replaced
    by that tensor; None when no initializer matches or one has another shape."""
    import onnx

    model = onnx.ModelProto()
    model.CopyFrom(graph)
    replaced = 0
    for init in model.graph.initializer:
        tensor = state.get(init.name)
        if tensor is None:
            continue
        arr = tensor.detach().to("cpu", torch.float32).numpy()
        if init.data_type != onnx.TensorProto.FLOAT or list(arr.shape) != list(init.dims):
            return None
        init.ClearField("float_data")
        init.raw_data = np.ascontiguousarray(arr, dtype="<f4").tobytes()
        replaced += 1
    return model.SerializeToString() if replaced else None


class OnnxRunner:
    name = "onnx"

    def __init__(
        self, task: Task, threads: int | None = None, graphs: OnnxGraphs | None = None
    ) -> None:
        if graphs is None:
            model, reweighted = OnnxGraphs().export(task), False
        else:
            model, reweighted = graphs.model(task)
        self.session: Any = onnx_session(model, task.device, threads)
        if reweighted and not self._matches(task):
            log.warning(
                "re-weighted ONNX graph of %s does not match PyTorch; exporting it on its own",
                task.content_id[:19],
            )
            assert graphs is not None
            model = graphs.export(task)
            self.session = onnx_session(model, task.device, threads)
        self.nbytes = len(model)

    def _matches(self, task: Task) -> bool:
        probe = np.random.default_rng(0).random((2, *task.input.shape), dtype=np.float32)
        with torch.inference_mode():
            expected = task.module(torch.from_numpy(probe).to(task.device)).float().cpu().numpy()
        got = self(probe)
        return bool(np.allclose(got, expected, rtol=_PARITY_ATOL, atol=_PARITY_ATOL))

    def __call__(self, x: np.ndarray) -> np.ndarray:
        return np.asarray(self.session.run([OUTPUT_NAME], {INPUT_NAME: x})[0], dtype=np.float32)


def make_runner(
    task: Task, runtime: str, threads: int | None = None, graphs: OnnxGraphs | None = None
) -> Runner:
    if runtime == "onnx":
        return OnnxRunner(task, threads, graphs)
    return TorchRunner(task)
