"""Materializing one task from its resident packed form (unpack the mask bits,
multiply by the padded fixed weights, copy the norm state, into a preallocated
buffer), beside a ``memcpy`` of the same weight bytes and beside a batch-1 forward
of the task, in the same run, interleaved, medians. Goals: <= 10 % of a batch-1
forward, and within 4x of the copy.

Also shown: the standalone module that tools build (``Backbone.task``), which is
what the service built per task before (module construction).

Run: python -m bench.bench_materialize [--repeats 200] [--threads 1]
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable

import torch

from bench._report import interleaved_medians, table, write_section
from bench._serving import load_average
from bench.bench_batching import ARCHS
from pemn.bundle import read_bundle
from pemn.materialize import Backbone
from pemn.prototype import Strategy
from pemn.testing import make_bundle

NETWORKS = [k for k in ARCHS if not k.startswith("MLP")]


def _device_name(device: torch.device) -> str:
    return torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU"


def _medians(
    fns: dict[str, Callable[[], object]], repeats: int, device: torch.device
) -> dict[str, float]:
    """Median microseconds of each function, interleaved (synchronized on a GPU)."""
    sync = torch.cuda.synchronize if device.type == "cuda" else None
    return {k: v * 1e6 for k, v in interleaved_medians(fns, repeats, warmup=1, sync=sync).items()}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--repeats", type=int, default=200)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--device", default="cpu", help="cpu, cuda, cuda:N")
    p.add_argument("--no-write", action="store_true", help="print only")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    loads = [load_average()]
    rows = []
    for label in NETWORKS:
        arch, config = ARCHS[label]
        bundle = read_bundle(make_bundle(arch, config, Strategy("rp", seed=0, ratio=1e-2)))
        bb = Backbone.for_bundle(bundle, device, channels_last=True)  # as the service runs it
        packed = bb.pack(bundle)
        out = bb.empty_weights()
        weights = bb.materialize(packed)
        src = weights.flat.clone()
        x = torch.rand(1, *bundle.manifest.input.shape, device=device)
        reps = args.repeats if bb.task_nbytes < 4e6 else max(20, args.repeats // 5)
        with torch.inference_mode():
            us = _medians(
                {
                    "materialize": lambda bb=bb, p=packed, o=out: bb.materialize(p, o),
                    "memcpy": lambda o=out, s=src: o.flat.copy_(s),
                    "forward": lambda bb=bb, x=x, w=weights: bb.forward(x, w),
                },
                reps,
                device,
            )
            module_us = _medians(
                {"module": lambda bb=bb, b=bundle: bb.task(b, verify=False)},
                max(10, reps // 10),
                device,
            )
        rows.append(
            [
                label,
                f"{bb.layout.n:,}",
                f"{bb.task_nbytes / 1e6:.2f}",
                f"{us['materialize']:.0f}",
                f"{us['memcpy']:.0f}",
                f"**{us['materialize'] / us['memcpy']:.1f}x**",
                f"{us['forward']:.0f}",
                f"**{100 * us['materialize'] / us['forward']:.1f} %**",
                f"{module_us['module']:.0f}",
            ]
        )
        print(rows[-1], flush=True)
    loads.append(load_average())
    body = f"""
One task, rp 1e-2, device {device} ({_device_name(device)}), {args.threads} torch thread(s); each network's three timings
interleaved, {args.repeats} repeats (fewer for networks above 4 MB), medians in
microseconds. `materialize`: packed task -> its weights in the backbone's flat layout,
written into a preallocated buffer (the hot tier's insert, or a batch's buffer when
the task is not hot); `memcpy`: copying those bytes; `forward`: a batch-1 forward of
the task on the backbone's network (channels-last, as the service runs it);
`standalone module`: `Backbone.task` (materialize, then build an `nn.Module` holding
the weights), what tools use. Load average (1/5/15 min): from {loads[0]} to {loads[1]}.

{table(["network", "N", "task MB", "materialize us", "memcpy us", "vs memcpy (goal <= 4x)", "batch-1 forward us", "of a forward (goal <= 10 %)", "standalone module us"], rows)}
"""
    print(body)
    if not args.no_write:
        write_section(
            "materialize" if device.type == "cpu" else f"materialize_{device.type}",
            "Materializing a task from its packed form vs a copy and a forward",
            body,
            "python -m bench.bench_materialize " + " ".join(sys.argv[1:]),
        )


if __name__ == "__main__":
    main()
