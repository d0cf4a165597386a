"""Batching on CPU, in-process (no HTTP): what one forward costs per item as the
batch grows (one task; torch channels-last as the service runs it, torch NCHW,
ONNX Runtime), and what a batch that mixes tasks of one backbone costs against a
batch of one task, for every architecture: one pass with per-sample weights
(hot weights gathered, or expanded from the packed form into the batch), and one
forward per task back to back.

Every variant runs interleaved with the others; each row's ratio is the median of
the per-repeat ratios to the one-task batch of the same repeat (robust to a noisy
machine), times are medians.

Run: python -m bench.bench_batching [--threads 1] [--repeats 15]
"""

from __future__ import annotations

import argparse
import dataclasses
import statistics
import sys
from collections.abc import Callable
from typing import Any

import numpy as np
import torch

from bench._report import interleaved_timings, paired_ratios, table, write_section
from bench._serving import MODEL, images, load_average, task_bundle
from pemn.bundle import read_bundle
from pemn.materialize import Backbone, PackedTask
from pemn.prototype import Strategy
from pemn.testing import make_bundle
from service.runtimes import OnnxGraphs, OnnxRunner, default_mixed_mode

SIZES = (1, 2, 4, 8, 16, 32, 64)
ARCHS: dict[str, tuple[str, dict[str, Any]]] = {
    "ConvMixer-128/4 (1x28x28, patch 2)": (
        "convmixer",
        {"in_channels": 1, "image_size": 28, "width": 128, "depth": 4, "patch": 2},
    ),
    "ConvMixer-256/8 (3x32x32, patch 2)": ("convmixer", {"width": 256, "depth": 8, "patch": 2}),
    "ResNet-56 (3x32x32)": ("resnet56", {}),
    "ViT-256/6 (3x32x32, patch 4)": ("vit", {"width": 256, "depth": 6}),
    "MLP 784-256-256 (1x28x28)": ("mlp", {"in_channels": 1, "image_size": 28}),
}


def _sync() -> None:
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        torch.cuda.synchronize()


def _timed(
    fns: dict[str, Callable[[], object]], repeats: int
) -> tuple[dict[str, float], dict[str, float]]:
    """Median ms of each function, and its median per-round ratio to the first one."""
    times = interleaved_timings(fns, repeats, sync=_sync)
    ms = {k: 1000 * statistics.median(v) for k, v in times.items()}
    return ms, paired_ratios(times, next(iter(fns)))


def _distinct(packed: PackedTask, n: int) -> list[PackedTask]:
    """``n`` distinct tasks of ``packed``'s backbone (random masks; compute does not
    depend on the mask contents)."""
    rng = np.random.default_rng(0)
    return [
        dataclasses.replace(
            packed,
            content_id=f"sha256:{i:064x}",
            masks=rng.integers(0, 256, packed.masks.shape, dtype=np.uint8),
        )
        for i in range(n)
    ]


def per_item_sweep(repeats: int, threads: int) -> list[list[str]]:
    bundle = read_bundle(task_bundle(0))
    fast = Backbone.for_bundle(bundle, channels_last=True)  # as the service runs it
    nchw = Backbone.for_bundle(bundle)
    wf, wn = fast.materialize(fast.pack(bundle)), nchw.materialize(nchw.pack(bundle))
    onnx = OnnxRunner.build(fast, fast.pack(bundle), threads, OnnxGraphs())
    x = images(max(SIZES))
    rows = []
    for n in SIZES:
        xb = np.ascontiguousarray(x[:n])
        xt = torch.from_numpy(xb)
        ms, _ = _timed(
            {
                "torch": lambda xt=xt: fast.forward(xt, wf),
                "nchw": lambda xt=xt: nchw.forward(xt, wn),
                "onnx": lambda xb=xb: onnx(xb),
            },
            max(12, repeats * 8 // n),
        )
        rows.append(
            [
                n,
                f"{ms['nchw']:.2f}",
                f"{ms['torch']:.2f}",
                f"{ms['nchw'] / ms['torch']:.2f}x",
                f"{ms['torch'] / n:.3f}",
                f"{ms['onnx']:.2f}",
                f"{ms['onnx'] / n:.3f}",
            ]
        )
        print(rows[-1], flush=True)
    return rows


def _weights_as_inputs(model: bytes, names: set[str]) -> bytes:
    """The ONNX model with the initializers named in ``names`` turned into graph
    inputs (one session per backbone, a task's weights fed per call)."""
    import onnx

    m = onnx.load_from_string(model)
    keep = []
    for init in m.graph.initializer:
        if init.name in names:
            m.graph.input.append(
                onnx.helper.make_tensor_value_info(init.name, init.data_type, list(init.dims))
            )
        else:
            keep.append(init)
    del m.graph.initializer[:]
    m.graph.initializer.extend(keep)
    return bytes(m.SerializeToString())


def onnx_input_rows(repeats: int, threads: int) -> list[list[str]]:
    """ONNX Runtime with the task's weights folded into the graph (one session per
    task, what the service does) vs fed as inputs of one session per backbone."""
    from pemn.export import INPUT_NAME, OUTPUT_NAME, export_onnx, onnx_session

    bundle = read_bundle(task_bundle(0))
    bb = Backbone.for_bundle(bundle)
    module = bb.module(bb.materialize(bb.pack(bundle)), bundle.manifest.input)
    state = {k: v.detach().numpy() for k, v in module.state_dict().items()}
    folded = export_onnx(module, tuple(bundle.manifest.input.shape))
    per_task = onnx_session(folded, "cpu", threads)
    shared = onnx_session(_weights_as_inputs(folded, set(state)), "cpu", threads)
    feeds = {
        n: np.ascontiguousarray(state[n])
        for n in {i.name for i in shared.get_inputs()} - {INPUT_NAME}
    }
    x = images(32)
    rows = []
    for n in (1, 8, 32):
        xb = np.ascontiguousarray(x[:n])
        diff = np.abs(
            per_task.run([OUTPUT_NAME], {INPUT_NAME: xb})[0]
            - shared.run([OUTPUT_NAME], {INPUT_NAME: xb, **feeds})[0]
        ).max()
        assert diff < 1e-4, diff
        ms, ratio = _timed(
            {
                "folded": lambda xb=xb: per_task.run([OUTPUT_NAME], {INPUT_NAME: xb}),
                "inputs": lambda xb=xb: shared.run([OUTPUT_NAME], {INPUT_NAME: xb, **feeds}),
            },
            max(8, repeats * 4 // n),
        )
        rows.append([n, f"{ms['folded']:.2f}", f"{ms['inputs']:.2f}", f"{ratio['inputs']:.2f}x"])
        print(rows[-1], flush=True)
    return rows


def mixed_rows(repeats: int, batches: tuple[int, ...], device: torch.device) -> list[list[str]]:
    rows = []
    for label, (arch, config) in ARCHS.items():
        bundle = read_bundle(make_bundle(arch, config, Strategy("rp", seed=0, ratio=1e-2)))
        bb = Backbone.for_bundle(bundle, device, channels_last=True)
        for n in batches:
            tasks = _distinct(bb.pack(bundle), n)
            hot = [bb.materialize(t) for t in tasks]
            x = torch.rand(
                n, *bundle.manifest.input.shape, generator=torch.Generator().manual_seed(0)
            )
            reps = max(4, repeats * 8 // n) if bb.task_nbytes < 4e6 else max(3, repeats // 3)
            ms, ratio = _timed(
                {
                    "one": lambda x=x, w=hot[0], bb=bb: bb.forward(x, w),
                    "per_sample": lambda x=x, h=hot, bb=bb: bb.forward_mixed(x, h),
                    "per_sample_packed": lambda x=x, t=tasks, bb=bb: bb.forward_mixed(x, t),
                    "per_task": lambda x=x, h=hot, bb=bb: bb.forward_grouped(x, h),
                },
                reps,
            )
            rows.append(
                [
                    label,
                    n,
                    f"{ms['one'] / n:.3f}",
                    f"{ms['per_sample'] / n:.3f} ({ratio['per_sample']:.2f}x)",
                    f"{ms['per_sample_packed'] / n:.3f} ({ratio['per_sample_packed']:.2f}x)",
                    f"{ms['per_task'] / n:.3f} ({ratio['per_task']:.2f}x)",
                    "per-sample" if ratio["per_sample"] <= ratio["per_task"] else "per-task",
                    f"{default_mixed_mode(bb).replace('_', '-')} (reuse {bb.weight_reuse:.0f})",
                ]
            )
            print(rows[-1], flush=True)
    return rows


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--device", default="cpu", help="cpu, cuda, cuda:N")
    p.add_argument("--repeats", type=int, default=15)
    p.add_argument("--batches", default="8,32", help="mixed batch sizes (distinct tasks)")
    p.add_argument("--no-write", action="store_true", help="print only")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    loads = [load_average()]
    device = torch.device(args.device)
    with torch.inference_mode():
        sweep = per_item_sweep(args.repeats, args.threads) if device.type == "cpu" else []
        onnx_rows = onnx_input_rows(args.repeats, args.threads) if device.type == "cpu" else []
        loads.append(load_average())
        mixed = mixed_rows(args.repeats, tuple(int(b) for b in args.batches.split(",")), device)
    loads.append(load_average())
    where = torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU"
    body = f"""
Device: {device} ({where}), {torch.get_num_threads()} torch thread(s), torch {torch.__version__}. Load average
(1/5/15 min): {loads[0]} at the start, {loads[1]} after the sweep, {loads[2]} at the end.

Cost per item vs batch size, one task ({MODEL}). `torch` is what the service runs
(`PEMN_CHANNELS_LAST=true`); `torch NCHW` the same task with `channels_last=False`:

{table(["batch", "torch NCHW ms", "torch ms", "channels-last speed-up", "torch ms/item", "onnx ms", "onnx ms/item"], sweep)}

Batches that mix tasks of one backbone (every item a different task, rp 1e-2; ms per
item, and in parentheses the median ratio to a batch of one task of the same size):
`per-sample` is one pass with each item's weights gathered from the hot tier,
`per-sample from packed` the same with every task expanded from its packed form
into the batch's buffers, `per-task` one forward per task back to back.

{table(["network", "batch", "one task ms/item", "per-sample", "per-sample from packed", "per-task", "faster mixed mode", "server's default"], mixed)}

ONNX Runtime, the same task two ways ({MODEL}): its weights folded into the graph as
initializers (one session per task: what the service does), or fed as inputs of one
session per backbone at every call (what would make a task's ONNX "materialization"
free). Outputs agree within 1e-4:

{table(["batch", "folded ms", "weights as inputs ms", "inputs vs folded"], onnx_rows)}

The server's default (`service.runtimes.default_mixed_mode`): per-sample on a GPU, and
on the CPU where the network uses each weight at least 128 times per sample (reuse:
output positions per weight, averaged over the maskable weights).
"""
    print(body)
    if not args.no_write:
        write_section(
            "batching" if device.type == "cpu" else f"batching_{device.type}",
            "Batching on CPU: cost per item vs batch size, and batches that mix tasks",
            body,
            "python -m bench.bench_batching " + " ".join(sys.argv[1:]),
        )


if __name__ == "__main__":
    main()
