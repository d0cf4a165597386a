"""Re-estimate a finished run's BatchNorm statistics and measure the test accuracy again.

    python -m bench.bn_reestimate runs/rp2-3/run [runs/mp-3/run ...] [--batches 20,100,469]

For each run directory (the trainer's ``--run-dir``, holding ``checkpoint.safetensors``
of the final epoch): the test accuracy as trained, then, for each batch count K, with
every BatchNorm's running mean and variance recomputed as the plain average over K
training batches (train mode, no gradients, without and with the run's augmentation), as a
bundle would fold them. A method from the literature that keeps the bundle the same
size (BN re-estimation of weight-sharing and quantised networks); issue 16 measured it
and docs/results.md reports the result. Prints a Markdown table; writes nothing.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch
from torch import nn

from pemn.normalize import Normalize
from trainer.checkpoint import CHECKPOINT_NAME, load_checkpoint
from trainer.config import TrainConfig
from trainer.data.batches import Augment, train_batches
from trainer.model import build_model
from trainer.run import RunData, accuracy, load_run_data, predict

_EPOCH = 10_000  # a data order no run of a few epochs trained on


def _test_accuracy(model: nn.Module, data: RunData, norm: Normalize) -> float:
    return accuracy(predict(model, data.test, torch.device("cpu"), 1000, norm), data.test)


def _reestimate(
    model: nn.Module, data: RunData, norm: Normalize, cfg: TrainConfig, k: int, augment: bool
) -> None:
    norms = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    for m in norms:
        m.reset_running_stats()
        m.momentum = None  # cumulative average over the batches seen
    model.train()
    with torch.no_grad():
        aug = Augment(flip=cfg.flip, crop_pad=cfg.crop_pad) if augment else Augment(flip=False)
        batches = train_batches(data.train, cfg.batch_size, cfg.seed, _EPOCH, aug)
        for step, x, _ in batches:
            if step >= k:
                break
            model(norm(x))
    model.eval()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument(
        "runs", nargs="+", type=Path, help="run directories (--run-dir of a finished run)"
    )
    p.add_argument("--batches", default="20,100,469", help="comma-separated batch counts K")
    p.add_argument("--threads", type=int, default=2)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    counts = [int(k) for k in args.batches.split(",")]
    print("| run | as trained | " + " | ".join(f"K={k} (plain / augmented)" for k in counts) + " |")
    print("|---|---:|" + "---:|" * len(counts))
    for run in args.runs:
        path = run / CHECKPOINT_NAME
        cfg = TrainConfig.from_dict(load_checkpoint(path).config)
        data = load_run_data(cfg)
        model = build_model(cfg, data.arch_config)
        load_checkpoint(path, model)
        norm = Normalize(data.mean, data.std, torch.device("cpu"))
        trained = {k: v.clone() for k, v in model.state_dict().items()}
        base = _test_accuracy(model, data, norm)
        cells = []
        for k in counts:
            pair = []
            for augment in (False, True):
                model.load_state_dict(trained)
                start = time.perf_counter()
                _reestimate(model, data, norm, cfg, k, augment)
                seconds = time.perf_counter() - start
                pair.append(f"{100 * _test_accuracy(model, data, norm):.2f}")
            cells.append(f"{pair[0]} / {pair[1]} ({seconds:.0f} s)")
        print(
            f"| {run} ({cfg.label()}) | {100 * base:.2f} | " + " | ".join(cells) + " |", flush=True
        )


if __name__ == "__main__":
    main()
