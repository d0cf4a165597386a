"""Lanes: what runs a batch whose requests may name different tasks of one backbone.

A lane is one backbone on one runtime. The batcher hands it a batch of requests
(each a (b, C, H, W) float32 array and its task) on the device's inference
thread; the lane answers each request with its logits, or with the error that
concerns that request only (a task that cannot be built fails its requests, not
the batch).

- ``TorchLane``: the backbone's one network (``pemn.multitask``). Hot tasks keep
  their expanded weights in a bytes-bounded LRU (this thread only); a task that is
  not hot is expanded from its packed form straight into the batch's buffers. A
  batch of one task runs as one forward with that task's weights (no copy); a batch
  that mixes tasks runs in one pass with per-sample weights (``per_sample``) or as
  one forward per task back to back (``per_task``), chosen by the device and the
  network (``default_mixed_mode``) unless set.
- ``OnnxLane``: each task is an ONNX Runtime session (exported once per backbone
  and re-weighted per task, ``OnnxGraphs``); a mixed batch runs one session call per
  task inside one hand-off. Sessions are built in the load pool (milliseconds), so
  they live in the registry's ONNX tier, not here.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import Any, Protocol

import numpy as np
import torch

from pemn.export import INPUT_NAME, OUTPUT_NAME, export_onnx, onnx_session
from pemn.materialize import Backbone, MixedMode, PackedTask, TaskWeights
from service.cache import ByteLRU
from service.errors import Unservable

__all__ = [
    "Lane",
    "OnnxGraphs",
    "OnnxLane",
    "OnnxRunner",
    "TorchLane",
    "default_mixed_mode",
]

log = logging.getLogger("service.runtimes")

# How close a re-weighted graph must match PyTorch on the probe batch.
_PARITY_ATOL = 1e-4


class Lane(Protocol):
    key: tuple[str, str]  # (backbone fingerprint, runtime)
    runtime: str
    label: str  # for metrics: architecture and short fingerprint

    def run(self, xs: list[np.ndarray], tasks: list[Any]) -> list[np.ndarray | Exception]:
        """Logits (b_i, K) for each request i, or the exception that failed it."""
        ...

    def holds(self, content_id: str) -> bool: ...

    @property
    def task_bytes(self) -> int: ...

    def stats(self) -> dict[str, Any]: ...


# On the CPU, one pass with per-sample weights pays for gathering every sample's
# weights; it wins where each weight does enough work per sample to hide that
# (convolutions: ConvMixer reuses each weight ~200 times per image, ResNet-56 ~300)
# and loses where it does not (the ViT's linear layers over 64 tokens, the MLP's
# over one): bench/bench_batching.py, docs/benchmarks.md.
_PER_SAMPLE_MIN_REUSE = 128


def default_mixed_mode(backbone: Backbone) -> MixedMode:
    """How a batch that mixes tasks runs when not configured: one pass with
    per-sample weights on a GPU (one forward per task would be bound by kernel
    launches), and on the CPU where the network reuses each weight enough per
    sample (``Backbone.weight_reuse``); else one forward per task."""
    if backbone.device.type != "cpu" or backbone.weight_reuse >= _PER_SAMPLE_MIN_REUSE:
        return "per_sample"
    return "per_task"


def _run_sessions(xs: list[np.ndarray], tasks: list[OnnxRunner]) -> list[np.ndarray | Exception]:
    """One session call per distinct task, its requests concatenated."""
    groups: dict[int, list[int]] = {}
    for i, t in enumerate(tasks):
        groups.setdefault(id(t), []).append(i)
    results: list[np.ndarray | Exception] = [np.empty(0)] * len(xs)
    for idx in groups.values():
        parts = [xs[i] for i in idx]
        logits = tasks[idx[0]](parts[0] if len(parts) == 1 else np.concatenate(parts))
        for i, part in zip(idx, _split(logits, [len(p) for p in parts]), strict=True):
            results[i] = part
    return results


def _split(logits: np.ndarray, sizes: list[int]) -> list[np.ndarray]:
    out, pos = [], 0
    for n in sizes:
        out.append(logits[pos : pos + n])
        pos += n
    return out


class TorchLane:
    """The backbone's one network on torch. With ``runtime="auto"`` the batch may also
    hold tasks that have an ONNX Runtime session (the hot ones): those run one session
    call per task, the rest on the torch network, in the same hand-off."""

    def __init__(
        self,
        key: tuple[str, str],
        backbone: Backbone,
        hot_bytes: int,
        mode: MixedMode | None = None,
        on_materialize: Callable[[float], None] | None = None,
        runtime: str = "torch",
    ) -> None:
        self.key = key
        self.runtime = runtime
        self._observe = on_materialize
        self.backbone = backbone
        self.label = f"{backbone.arch}:{backbone.fingerprint[7:15]}"
        self.mode: MixedMode = mode or default_mixed_mode(backbone)
        self.hot: ByteLRU[str, TaskWeights] = ByteLRU("hot", hot_bytes, lambda w: w.nbytes)
        self._scratch: TaskWeights | None = None  # a single non-hot task's weights
        self.batches = {"single": 0, "per_sample": 0, "per_task": 0, "onnx": 0}

    @property
    def task_bytes(self) -> int:
        return self.backbone.task_nbytes

    def holds(self, content_id: str) -> bool:
        return content_id in self.hot

    def _weights(self, packed: PackedTask) -> TaskWeights | PackedTask:
        """The hot weights of ``packed`` (expanded and cached on a miss), or the packed
        task itself when the hot tier cannot hold one task (expanded per batch)."""
        if self.hot.capacity < self.backbone.task_nbytes:
            self.backbone.check(packed)  # it is expanded inside the batch's forward
            return packed
        return self.hot.get_now(packed.content_id, lambda _: self._materialize(packed))

    def _materialize(self, packed: PackedTask, out: TaskWeights | None = None) -> TaskWeights:
        start = time.perf_counter()
        weights = self.backbone.materialize(packed, out)
        if self._observe is not None:
            self._observe(time.perf_counter() - start)
        return weights

    def run(
        self, xs: list[np.ndarray], tasks: list[PackedTask | OnnxRunner]
    ) -> list[np.ndarray | Exception]:
        results: list[np.ndarray | Exception | None] = [None] * len(xs)
        sessions = {i: t for i, t in enumerate(tasks) if isinstance(t, OnnxRunner)}
        if sessions:  # runtime auto: hot tasks with a session of their own
            self.batches["onnx"] += 1
            answers = _run_sessions([xs[i] for i in sessions], list(sessions.values()))
            for i, answer in zip(sessions, answers, strict=True):
                results[i] = answer
        rest = [i for i, t in enumerate(tasks) if not isinstance(t, OnnxRunner)]
        resolved: dict[int, TaskWeights | PackedTask | Exception] = {}
        for i in rest:
            t = tasks[i]
            assert isinstance(t, PackedTask)
            if id(t) not in resolved:
                try:
                    resolved[id(t)] = self._weights(t)
                except Exception as exc:  # this task only
                    log.exception("task %s could not be materialized", t.content_id[:19])
                    resolved[id(t)] = Unservable(
                        f"task {t.content_id[:19]} could not be materialized: {exc}"
                    )
        ok = [i for i in rest if not isinstance(resolved[id(tasks[i])], Exception)]
        for i in rest:
            failed = resolved[id(tasks[i])]
            if isinstance(failed, Exception):
                results[i] = failed
        if ok:
            logits = self._forward([xs[i] for i in ok], [resolved[id(tasks[i])] for i in ok])
            for i, part in zip(ok, _split(logits, [len(xs[i]) for i in ok]), strict=True):
                results[i] = part
        return results  # type: ignore[return-value]

    def _forward(self, xs: list[np.ndarray], weights: list[Any]) -> np.ndarray:
        bb = self.backbone
        x = torch.from_numpy(xs[0] if len(xs) == 1 else np.concatenate(xs))
        distinct = {id(w) for w in weights}
        if len(distinct) == 1:
            w = weights[0]
            if isinstance(w, PackedTask):
                if self._scratch is None:
                    self._scratch = bb.empty_weights()
                w = self._materialize(w, self._scratch)
            self.batches["single"] += 1
            out = bb.forward(x, w)
        else:
            rows = [w for w, a in zip(weights, xs, strict=True) for _ in range(len(a))]
            self.batches[self.mode] += 1
            if self.mode == "per_sample":
                out = bb.forward_mixed(x, rows)
            else:
                out = bb.forward_grouped(x, rows, self._scratch)
        return out.float().cpu().numpy()

    def stats(self) -> dict[str, Any]:
        s = self.hot.stats()
        return {
            "runtime": self.runtime,
            "mixed_mode": self.mode,
            "items": s.items,
            "bytes": s.bytes,
            "capacity": s.capacity,
            "hits": s.hits,
            "misses": s.misses,
            "evictions": s.evictions,
            "batches": dict(self.batches),
        }


class OnnxLane:
    runtime = "onnx"

    def __init__(self, key: tuple[str, str], arch: str) -> None:
        self.key = key
        self.label = f"{arch}:{key[0][7:15]}"
        self.batches = {"single": 0, "per_task": 0}

    task_bytes = 0

    def holds(self, content_id: str) -> bool:
        return False  # sessions live in the registry's ONNX tier

    def run(self, xs: list[np.ndarray], tasks: list[OnnxRunner]) -> list[np.ndarray | Exception]:
        self.batches["single" if len({id(t) for t in tasks}) == 1 else "per_task"] += 1
        return _run_sessions(xs, tasks)

    def stats(self) -> dict[str, Any]:
        return {"runtime": self.runtime, "batches": dict(self.batches)}


class OnnxGraphs:
    """Exported ONNX graphs, one per (backbone fingerprint, input shape), re-weighted
    per task. Exporting a network takes seconds; every task of a backbone has the
    same graph and differs only in the initializers named after its state-dict keys.
    Thread-safe; a graph is exported once even when tasks of a new backbone load in
    parallel."""

    def __init__(self) -> None:
        self._graphs: dict[tuple[str, tuple[int, ...]], Any] = {}  # -> onnx.ModelProto
        self._locks: dict[tuple[str, tuple[int, ...]], threading.Lock] = {}
        self._guard = threading.Lock()
        self.exports = 0  # full exports done (the expensive path)

    def model(
        self, module: torch.nn.Module, key: tuple[str, tuple[int, ...]]
    ) -> tuple[bytes, bool]:
        """The serialized ONNX model of ``module`` and whether it was re-weighted from
        the backbone's graph (then it still needs a parity check)."""
        import onnx

        with self._guard:
            lock = self._locks.setdefault(key, threading.Lock())
        with lock:  # single-flight export per backbone
            graph = self._graphs.get(key)
            if graph is None:
                data = self.export(module, key[1])
                self._graphs[key] = onnx.load_from_string(data)
                return data, False
        reweighted = _reweight(graph, module.state_dict())
        return (
            (reweighted, True) if reweighted is not None else (self.export(module, key[1]), False)
        )

    def export(self, module: torch.nn.Module, shape: tuple[int, ...]) -> bytes:
        self.exports += 1
        return export_onnx(module, shape)  # type: ignore[arg-type]

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
    """One task as an ONNX Runtime session (its weights folded into the graph)."""

    def __init__(self, session: Any, nbytes: int, content_id: str) -> None:
        self.session = session
        self.nbytes = nbytes
        self.content_id = content_id

    @classmethod
    def build(
        cls,
        backbone: Backbone,
        packed: PackedTask,
        threads: int | None = None,
        graphs: OnnxGraphs | None = None,
    ) -> OnnxRunner:
        """Export (or re-weight the backbone's graph) and check it against PyTorch on
        a probe batch; a mismatch exports the task on its own."""
        weights = backbone.materialize(packed)
        module = backbone.module(weights, packed.input)
        shape = tuple(packed.input.shape)
        graphs = graphs or OnnxGraphs()
        model, reweighted = graphs.model(module, (backbone.fingerprint, shape))
        session = onnx_session(model, backbone.device, threads)
        probe = np.random.default_rng(0).random((2, *shape), dtype=np.float32)
        runner = cls(session, len(model), packed.content_id)
        if reweighted and not runner._matches(module, probe, backbone.device):
            log.warning(
                "re-weighted ONNX graph of %s does not match PyTorch; exporting it on its own",
                packed.content_id[:19],
            )
            model = graphs.export(module, shape)
            runner = cls(
                onnx_session(model, backbone.device, threads), len(model), packed.content_id
            )
        return runner

    def _matches(self, module: torch.nn.Module, probe: np.ndarray, device: torch.device) -> bool:
        with torch.inference_mode():
            expected = module(torch.from_numpy(probe).to(device)).float().cpu().numpy()
        return bool(np.allclose(self(probe), expected, rtol=_PARITY_ATOL, atol=_PARITY_ATOL))

    def __call__(self, x: np.ndarray) -> np.ndarray:
        return np.asarray(self.session.run([OUTPUT_NAME], {INPUT_NAME: x})[0], dtype=np.float32)
