"""Batching on CPU, in-process (no HTTP): what one forward costs per item as the
batch grows, for the torch and ONNX runners, and whether batching *across* tasks
that share a backbone (``torch.func.functional_call`` + ``torch.vmap`` over the
tasks' stacked weights, i.e. grouped convolutions) beats running each task's item
on its own. This explains the serving and task-swapping results.

Every variant runs interleaved with the others, ``--repeats`` times; medians.

Run: python -m bench.bench_batching [--threads 1] [--tasks 16]
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable

import numpy as np
import torch
from torch.func import functional_call, stack_module_state, vmap

from bench._report import interleaved_medians, table, write_section
from bench._serving import MODEL, images, load_average, task_bundle
from pemn.bundle import read_bundle
from pemn.materialize import Backbone
from service.runtimes import OnnxGraphs, OnnxRunner, TorchRunner

SIZES = (1, 2, 4, 8, 16, 32, 64)


def _median_ms(fns: dict[str, Callable[[], object]], repeats: int) -> dict[str, float]:
    return {k: 1000 * s for k, s in interleaved_medians(fns, repeats).items()}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--tasks", type=int, default=16, help="tasks batched together (vmap)")
    p.add_argument("--repeats", type=int, default=15)
    p.add_argument("--no-write", action="store_true", help="print only")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    loads = [load_average()]
    bundles = [read_bundle(task_bundle(i), verify=False) for i in range(args.tasks)]
    backbone = Backbone.for_bundle(bundles[0], channels_last=True)  # as the service does
    tasks = [backbone.task(b) for b in bundles]
    nchw_runner = TorchRunner(Backbone.for_bundle(bundles[0]).task(bundles[0]))
    graphs = OnnxGraphs()
    torch_runners = [TorchRunner(t) for t in tasks]
    onnx_runner = OnnxRunner(tasks[0], args.threads, graphs)
    x = images(max(SIZES))

    # 1. cost per item vs batch size, one task
    sweep = []
    per_item: dict[str, dict[int, float]] = {"torch": {}, "onnx": {}, "nchw": {}}
    for n in SIZES:
        xb = np.ascontiguousarray(x[:n])
        reps = max(12, args.repeats * 8 // n)
        ms = _median_ms(
            {
                "torch": lambda xb=xb: torch_runners[0](xb),
                "nchw": lambda xb=xb: nchw_runner(xb),
                "onnx": lambda xb=xb: onnx_runner(xb),
            },
            reps,
        )
        per_item["torch"][n] = ms["torch"] / n
        per_item["onnx"][n] = ms["onnx"] / n
        per_item["nchw"][n] = ms["nchw"] / n
        sweep.append(
            [
                n,
                f"{ms['nchw']:.2f}",
                f"{ms['torch']:.2f}",
                f"{ms['nchw'] / ms['torch']:.2f}x",
                f"{ms['torch'] / n:.2f}",
                f"{ms['onnx']:.2f}",
                f"{ms['onnx'] / n:.2f}",
            ]
        )
        print(sweep[-1], flush=True)

    # 2. one item for each of T tasks: one batch of T (as if one task), T batches of
    #    one, and one vmap over the T tasks' stacked weights
    t_ = args.tasks
    modules = [t.module for t in tasks]
    params, buffers = stack_module_state(modules)  # type: ignore[arg-type]
    template = modules[0]

    def one(
        p: dict[str, torch.Tensor], b: dict[str, torch.Tensor], xi: torch.Tensor
    ) -> torch.Tensor:
        return functional_call(template, (p, b), (xi,))

    batched = vmap(one)
    xt = torch.from_numpy(np.ascontiguousarray(x[:t_]))
    xs = [np.ascontiguousarray(x[i : i + 1]) for i in range(t_)]
    with torch.inference_mode():
        got = batched(params, buffers, xt[:, None]).squeeze(1)
        ref = torch.cat([modules[i](xt[i : i + 1]) for i in range(t_)])
        exact = float((got - ref).abs().max())
        cross = _median_ms(
            {
                "one": lambda: torch_runners[0](np.ascontiguousarray(x[:t_])),
                "seq": lambda: [torch_runners[i](xs[i]) for i in range(t_)],
                "vmap": lambda: batched(params, buffers, xt[:, None]),
                "vmap+stack": lambda: batched(*stack_module_state(modules), xt[:, None]),
            },
            args.repeats,
        )
        # the same comparison for other mixes: T tasks with n items each
        mixes = []
        for tn, n in ((2, 1), (4, 1), (8, 1), (4, 4), (2, 16), (4, 16)):
            ms_, xm = modules[:tn], torch.from_numpy(np.ascontiguousarray(x[: tn * n]))
            xm = xm.view(tn, n, *xm.shape[1:])
            parts = [np.ascontiguousarray(xm[i].numpy()) for i in range(tn)]
            got = vmap(one)(*stack_module_state(ms_), xm)
            ref = torch.stack([ms_[i](xm[i]) for i in range(tn)])
            exact = max(exact, float((got - ref).abs().max()))
            mix = _median_ms(
                {
                    "seq": lambda ms_=ms_, parts=parts: [
                        torch_runners[i](parts[i]) for i in range(len(ms_))
                    ],
                    "vmap+stack": lambda ms_=ms_, xm=xm: vmap(one)(*stack_module_state(ms_), xm),
                },
                max(5, args.repeats // 2),
            )
            mixes.append(
                [
                    tn,
                    n,
                    f"{mix['seq']:.1f}",
                    f"{mix['vmap+stack']:.1f}",
                    f"{mix['seq'] / mix['vmap+stack']:.2f}x",
                ]
            )
    loads.append(load_average())
    cross_rows = [
        [
            f"one task, one batch of {t_}",
            f"{cross['one']:.1f}",
            f"{cross['one'] / t_:.2f}",
            "1.00x",
        ],
        [
            f"{t_} tasks, {t_} batches of 1 (what the server does)",
            f"{cross['seq']:.1f}",
            f"{cross['seq'] / t_:.2f}",
            f"{cross['one'] / cross['seq']:.2f}x",
        ],
        [
            f"{t_} tasks, one vmap, weights stacked for the batch (what a server would do)",
            f"{cross['vmap+stack']:.1f}",
            f"{cross['vmap+stack'] / t_:.2f}",
            f"{cross['one'] / cross['vmap+stack']:.2f}x",
        ],
        [
            f"{t_} tasks, one vmap over weights stacked beforehand (lower bound)",
            f"{cross['vmap']:.1f}",
            f"{cross['vmap'] / t_:.2f}",
            f"{cross['one'] / cross['vmap']:.2f}x",
        ],
    ]
    tb = min(per_item["torch"], key=lambda n: per_item["torch"][n])
    ob = min(per_item["onnx"], key=lambda n: per_item["onnx"][n])
    pt, po = per_item["torch"], per_item["onnx"]
    figures = f"""Per item, torch: cheapest at batch {tb} ({pt[tb]:.2f} ms), {pt[1] / pt[tb]:.1f}x
cheaper than at batch 1; batch 64 costs {pt[64] / pt[tb]:.1f}x its best. ONNX Runtime: batch 1
costs {po[1] / po[ob]:.2f}x its best (batch {ob}). Across {t_} tasks of one item: one vmap
with the stacking runs at {cross["seq"] / cross["vmap+stack"]:.2f}x the speed of {t_} batches
of one ({cross["seq"] / cross["vmap"]:.2f}x with the weights stacked beforehand; one real
batch of {t_}: {cross["seq"] / cross["one"]:.1f}x)."""
    body = f"""
Model: {MODEL}; torch and ONNX Runtime pinned to {args.threads} thread(s); in-process,
one forward per timing, variants interleaved, medians. Load average (1/5/15 min):
from {loads[0]} to {loads[-1]}.

Cost per item vs batch size (one task). `torch` is what the service runs
(`PEMN_CHANNELS_LAST=true`, the default: convolution weights channels-last);
`torch NCHW` the same task with `channels_last=False`:

{table(["batch", "torch NCHW ms", "torch ms", "channels-last speed-up", "torch ms/item", "onnx ms", "onnx ms/item"], sweep)}

Batching across tasks ({t_} tasks on one backbone, one item each; vmap output equals the
per-task runs within {exact:.1e}):

{table(["variant", "ms", "ms/item", "throughput vs one batch"], cross_rows)}

Other mixes of tasks and items (one batch per task vs one vmap, weights stacked per batch):

{table(["tasks", "items per task", "one batch per task ms", "vmap ms", "vmap speed-up"], mixes)}

{figures}
"""
    print(body)
    if not args.no_write:
        write_section(
            "batching",
            "Batching on CPU: cost per item vs batch size, and across tasks",
            body,
            "python -m bench.bench_batching " + " ".join(sys.argv[1:]),
        )


if __name__ == "__main__":
    main()
