"""Norm state precision: test accuracy of trained bundles with their folded norm
state stored in float32 (the baseline), float16 and bfloat16 (format 2.0).

Bundles: every ``examples/bundles/*.pemn`` (format 1.0, float32 state) and, with
``--run-dir DIR`` (repeatable), the final checkpoint of a finished training run,
written once with a float32 state (the trainer's own export writes the default
precision). Each float32 bundle is converted with ``pemn.bundle.convert_bundle``
(same masks, the state rounded to nearest-even) and every version is read back,
materialized and evaluated on its dataset's whole test split (Fashion-MNIST or
MNIST, 10,000 images), the way the trainer measures a bundle. The budget (issue
16): no bundle's accuracy may drop by more than 0.05 points.

Also printed: how many test predictions change, the largest logit change relative
to the largest logit, and the largest |state value| (float16's range ends at 65504).

Run: python -m bench.bench_state_dtype [--run-dir runs/x ...] [--threads 2] [--no-docs]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

import numpy as np
import torch

from bench._report import table, write_section
from pemn.bundle import convert_bundle, read_bundle, write_bundle
from pemn.materialize import materialize

ROOT = Path(__file__).resolve().parents[1]

DTYPES = ("float32", "float16", "bfloat16")
BUDGET = 0.05  # points of test accuracy


def _from_run(run_dir: Path) -> bytes:
    """The run's final checkpoint as a float32-state bundle (what ``trainer export``
    writes, but with ``state_dtype="float32"``)."""
    from pemn.masking import extract_masks, trained_state
    from trainer.bundling import input_spec
    from trainer.checkpoint import CHECKPOINT_NAME, load_checkpoint
    from trainer.config import TrainConfig
    from trainer.model import build_model
    from trainer.run import load_run_data, read_result

    result = read_result(run_dir)
    if result is None:
        raise SystemExit(f"error: {run_dir} holds no finished run (no result.json)")
    cfg = TrainConfig.from_dict(result["config"])
    data = load_run_data(cfg)
    model = build_model(cfg, data.arch_config)
    load_checkpoint(run_dir / CHECKPOINT_NAME, model)
    model.eval()
    return write_bundle(
        arch=cfg.arch,
        config=data.arch_config,
        strategy=cfg.pemn_strategy(),
        density=cfg.density,
        masks=extract_masks(model),
        trained=trained_state(model),
        input_spec=input_spec(data),
        labels=list(data.train.classes),
        metrics={"dataset": cfg.dataset, "test_examples": len(data.test), "epochs": cfg.epochs},
        provenance={"run_dir": str(run_dir)},
        state_dtype="float32",
    )


def _evaluate(data: bytes, test: Any) -> tuple[float, np.ndarray, np.ndarray]:
    """(accuracy, predictions, logits) of the bundle on the test split."""
    net = materialize(read_bundle(data), device="cpu")
    outs = []
    with torch.inference_mode():
        for i in range(0, len(test), 1000):
            outs.append(net(test.pixels(slice(i, min(i + 1000, len(test))))))
    logits = torch.cat(outs).numpy()
    pred = logits.argmax(1)
    return float((pred == test.labels.numpy()).mean()), pred, logits


def run(sources: list[tuple[str, bytes]]) -> list[dict[str, Any]]:
    from trainer.data import load_dataset

    rows = []
    for label, base in sources:
        b = read_bundle(base)
        if b.state_dtype != "F32":
            raise SystemExit(f"error: {label} stores its state as {b.state_dtype}, not float32")
        dataset = str(b.manifest.metrics.get("dataset", "fashion-mnist"))
        test = load_dataset(dataset, "test")
        m = b.manifest
        row: dict[str, Any] = {
            "bundle": label,
            "arch": f"{m.arch.name} {m.arch.config.get('width', '')}".strip(),
            "strategy": b.strategy.name + (f" {b.strategy.ratio:g}" if b.strategy.ratio else ""),
            "dataset": dataset,
            "values": int(b.state.size),
            "max_abs": float(np.abs(b.state).max()) if b.state.size else 0.0,
        }
        ref_acc, ref_pred, ref_logits = _evaluate(base, test)
        for dtype in DTYPES:
            data = base if dtype == "float32" else convert_bundle(base, state_dtype=dtype)
            acc, pred, logits = _evaluate(data, test)
            row[dtype] = {
                "accuracy": acc,
                "bytes": len(data),
                "changed": int((pred != ref_pred).sum()),
                "logit_change": float(np.abs(logits - ref_logits).max() / np.abs(ref_logits).max()),
            }
            assert dtype != "float32" or acc == ref_acc
        print(
            f"{label}: " + ", ".join(f"{d} {100 * row[d]['accuracy']:.2f}%" for d in DTYPES),
            file=sys.stderr,
        )
        rows.append(row)
    return rows


def render(rows: list[dict[str, Any]]) -> str:
    def delta(r: dict[str, Any], d: str) -> str:
        points = 100 * (r[d]["accuracy"] - r["float32"]["accuracy"])
        return f"{100 * r[d]['accuracy']:.2f} ({points:+.2f})"

    body = table(
        [
            "bundle",
            "arch",
            "strategy",
            "dataset",
            "state values",
            "max abs value",
            "float32 acc. %",
            "float16 acc. % (change)",
            "bfloat16 acc. % (change)",
            "predictions changed, f16 / bf16",
            "max logit change, f16 / bf16",
            "bytes f32 / f16 / bf16",
        ],
        [
            [
                r["bundle"],
                r["arch"],
                r["strategy"],
                r["dataset"],
                f"{r['values']:,}",
                f"{r['max_abs']:.3g}",
                f"{100 * r['float32']['accuracy']:.2f}",
                delta(r, "float16"),
                delta(r, "bfloat16"),
                f"{r['float16']['changed']} / {r['bfloat16']['changed']}",
                f"{r['float16']['logit_change']:.1e} / {r['bfloat16']['logit_change']:.1e}",
                f"{r['float32']['bytes']:,} / {r['float16']['bytes']:,} / {r['bfloat16']['bytes']:,}",
            ]
            for r in rows
        ],
    )
    worst = {
        d: max(abs(100 * (r[d]["accuracy"] - r["float32"]["accuracy"])) for r in rows)
        for d in ("float16", "bfloat16")
    }
    verdict = ", ".join(
        f"{d}: largest change {worst[d]:.2f} points ({'within' if worst[d] <= BUDGET else 'above'} "
        f"the {BUDGET} budget)"
        for d in worst
    )
    return (
        "Accuracy on the whole test split (10,000 images) of each bundle with its folded norm "
        "state stored in float32 (baseline), float16 and bfloat16; the masks are the same bytes. "
        "*Predictions changed*: test images whose predicted class differs from the float32 "
        "bundle's; *max logit change*: the largest |logit - float32 logit| over the test set, "
        "relative to the largest |float32 logit|.\n\n"
        f"{body}\n\n{verdict}.\n"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument(
        "--run-dir",
        type=Path,
        action="append",
        default=[],
        help="a finished training run to include (its checkpoint, written with a float32 state)",
    )
    parser.add_argument("--threads", type=int, default=2, help="torch threads")
    parser.add_argument(
        "--no-docs", action="store_true", help="print only; leave docs/benchmarks.md alone"
    )
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    sources = [
        (str(p.relative_to(ROOT)), p.read_bytes())
        for p in sorted((ROOT / "examples" / "bundles").glob("*.pemn"))
    ]
    sources += [(f"run {d}", _from_run(d)) for d in args.run_dir]
    body = render(run(sources))
    command = "python -m bench.bench_state_dtype" + "".join(f" --run-dir {d}" for d in args.run_dir)
    if args.no_docs:
        print(body)
    else:
        write_section(
            "state-dtype", "Norm state precision: float32, float16, bfloat16", body, command
        )


if __name__ == "__main__":
    main()
