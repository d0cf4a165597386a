"""Time per training step: every PEMN strategy vs the dense baseline, same
architecture, batch and process, plus the share of a masked step spent in top-k
mask selection, and the cost of distillation (``rp 1e-2 + teacher``: the dense
network's forward pass in eval mode without gradients on the same batch, and the
distillation loss, as ``--teacher`` does in the trainer). Writes the ``train_step`` section of docs/benchmarks.md.

    python -m bench.bench_train_step [--width 128 --depth 4 --batch 128 --threads 2]

A step is what the trainer does: forward, cross-entropy, backward, AdamW update,
channels-last inputs (the trainer's default). Configurations are measured in
interleaved rounds so that load from other processes hits all of them alike; the
figure is the median over every timed step. Top-k share = median time to compute
every layer's mask once (what one forward pass does) / median masked step time.
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # as `python -m trainer` does

import argparse
import statistics
import sys
import time

import torch
import torch.nn.functional as F

from bench._report import interleaved_medians, table, write_section
from pemn.archs import create_model
from pemn.layers import layer_specs
from pemn.masking import MaskedConv2d, MaskedLinear, to_masked, topk_mask
from pemn.prototype import Strategy, generate
from trainer.teacher import distill_loss

STRATEGIES = [
    ("dense", None),
    ("mask", Strategy("mask")),
    ("one_layer", Strategy("one_layer")),
    ("mp", Strategy("mp")),
    ("rp 1e-2", Strategy("rp", ratio=1e-2)),
    ("mp fan_in", Strategy("mp", scale="fan_in")),
]


def _model(args: argparse.Namespace, strategy: Strategy | None) -> torch.nn.Module:
    model = create_model(
        "convmixer",
        in_channels=1,
        image_size=28,
        num_classes=10,
        width=args.width,
        depth=args.depth,
        kernel=args.kernel,
        patch=args.patch,
    )
    fixed = generate(layer_specs(model), strategy or Strategy("mask"))
    if strategy is None:
        with torch.no_grad():
            for name, w in fixed.items():
                model.get_submodule(name).weight.copy_(w)
    else:
        to_masked(model, fixed, 0.5, generator=torch.Generator().manual_seed(0))
    return model.to(memory_format=torch.channels_last).train()  # type: ignore[call-overload]


class _Stepper:
    def __init__(
        self, model: torch.nn.Module, batch: int, teacher: torch.nn.Module | None = None
    ) -> None:
        g = torch.Generator().manual_seed(0)
        self.model = model
        self.teacher = None if teacher is None else teacher.eval().requires_grad_(False)
        self.x = torch.randn(batch, 1, 28, 28, generator=g).contiguous(
            memory_format=torch.channels_last
        )
        self.y = torch.randint(0, 10, (batch,), generator=g)
        params = [p for p in model.parameters() if p.requires_grad]
        self.opt = torch.optim.AdamW(params, lr=1e-3, weight_decay=0.005)

    def step(self) -> float:
        t = time.perf_counter()
        if self.teacher is None:
            loss = F.cross_entropy(self.model(self.x), self.y)
        else:
            with torch.no_grad():
                soft = self.teacher(self.x)
            loss = distill_loss(self.model(self.x), self.y, soft, weight=0.9, temperature=4.0)
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        self.opt.step()
        return time.perf_counter() - t


def _topk_time(model: torch.nn.Module, repeats: int) -> float:
    layers = [m for m in model.modules() if isinstance(m, MaskedConv2d | MaskedLinear)]

    def topk_all() -> None:
        for m in layers:
            topk_mask(m.scores, m.kept)

    return interleaved_medians({"topk": topk_all}, repeats, warmup=0)["topk"]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    p.add_argument("--width", type=int, default=128, help="ConvMixer width")
    p.add_argument("--depth", type=int, default=4, help="ConvMixer depth")
    p.add_argument("--kernel", type=int, default=5, help="depthwise kernel size")
    p.add_argument("--patch", type=int, default=2, help="patch size")
    p.add_argument("--batch", type=int, default=128, help="batch size")
    p.add_argument("--threads", type=int, default=2, help="torch threads")
    p.add_argument("--rounds", type=int, default=5, help="interleaved rounds")
    p.add_argument("--steps", type=int, default=4, help="timed steps per config per round")
    p.add_argument("--no-write", action="store_true", help="print only, do not touch docs/")
    args = p.parse_args()
    torch.set_num_threads(args.threads)

    steppers = {label: _Stepper(_model(args, s), args.batch) for label, s in STRATEGIES}
    steppers["rp 1e-2 + teacher"] = _Stepper(
        _model(args, Strategy("rp", ratio=1e-2)), args.batch, teacher=_model(args, None)
    )
    for s in steppers.values():  # warm-up: allocator, oneDNN primitives
        s.step()
        s.step()
    times: dict[str, list[float]] = {label: [] for label in steppers}
    for _ in range(args.rounds):
        for label, s in steppers.items():
            times[label] += [s.step() for _ in range(args.steps)]
    topk = _topk_time(steppers["mp"].model, repeats=args.rounds * args.steps)

    dense = statistics.median(times["dense"])
    rows = []
    for label, ts in times.items():
        med = statistics.median(ts)
        share = "" if label == "dense" else f"{100 * topk / med:.1f} %"
        rows.append([label, f"{1000 * med:.0f}", f"{med / dense:.2f}x", share])
    body = (
        f"ConvMixer-{args.width}/{args.depth} (kernel {args.kernel}, patch {args.patch}) on "
        f"1x28x28 inputs, batch {args.batch}, {args.threads} threads, AdamW, channels-last, "
        f"OMP_WAIT_POLICY={os.environ.get('OMP_WAIT_POLICY')}; median of "
        f"{args.rounds * args.steps} steps per row, measured in {args.rounds} interleaved rounds. "
        f"Goal: masked <= 1.1x dense. Top-k selection for all layers of one forward pass: "
        f"{1000 * topk:.1f} ms. A distillation step (rp 1e-2 + the dense teacher's forward) "
        f"costs {statistics.median(times['rp 1e-2 + teacher']) / statistics.median(times['rp 1e-2']):.2f}x "
        "a plain rp 1e-2 step.\n\n"
        + table(["strategy", "ms / step", "vs dense", "top-k share of the step"], rows)
        + "\n"
    )
    command = "python -m bench.bench_train_step " + " ".join(sys.argv[1:])
    if args.no_write:
        print(body)
    else:
        write_section("train_step", "Training step: masked vs dense", body, command.strip())


if __name__ == "__main__":
    main()
