"""Sweeps: strategies x ratios x scales on one architecture and dataset, one run
directory each, then a markdown table and an accuracy-vs-size plot.

A sweep is resumable: a run whose ``result.json`` matches its config is skipped, a
run with a checkpoint is resumed, and a finished run without its exported file
(bundle, or the dense baseline's safetensors) gets one. Outputs in ``out_dir``::

    <label>/        one run directory per configuration (see trainer.loop)
    table.md        the results table
    size.png        test accuracy against model size (paper formula), log x axis
"""

from __future__ import annotations

import io
import json
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from trainer.config import ALL_STRATEGIES, TrainConfig
from trainer.errors import ConfigError
from trainer.export import BUNDLE_NAME, DENSE_NAME, export_run
from trainer.io import atomic_write_bytes
from trainer.loop import train
from trainer.run import read_result

__all__ = ["expand", "render_table", "run_sweep", "write_plot"]


def expand(
    base: TrainConfig,
    strategies: Sequence[str],
    ratios: Sequence[float],
    scales: Sequence[str],
) -> list[TrainConfig]:
    """One config per (strategy, ratio, scale): ``ratios`` apply to rp only, ``scales``
    to mp and rp only (mask, one_layer and dense always use the paper's scaling)."""
    out = []
    for scale in scales:
        for strategy in strategies:
            if strategy in ("dense", "mask", "one_layer"):
                if scale == scales[0]:
                    out.append(base.replace(strategy=strategy, ratio=None))
            elif strategy == "mp":
                out.append(base.replace(strategy="mp", ratio=None, scale=scale))
            elif strategy == "rp":
                out += [base.replace(strategy=strategy, ratio=r, scale=scale) for r in ratios]
            else:
                raise ConfigError(
                    f"unknown strategy {strategy!r}; choose from {', '.join(ALL_STRATEGIES)}"
                )
    return out


def run_sweep(
    configs: Sequence[TrainConfig],
    out_dir: Path,
    *,
    progress: bool | None = None,
    echo: Callable[[str], None] = print,
) -> list[dict[str, Any]]:
    """Train (or skip, or resume) every config, export bundles, write table and plot."""
    out_dir.mkdir(parents=True, exist_ok=True)
    results = []
    for i, cfg in enumerate(configs):
        run_dir = out_dir / cfg.label()
        result = read_result(run_dir)
        if result is None or TrainConfig.from_dict(result["config"]).identity() != cfg.identity():
            echo(f"[{i + 1}/{len(configs)}] {cfg.label()}: training in {run_dir}")
            train(cfg, run_dir, resume=True, progress=progress, echo=echo)
        else:
            echo(f"[{i + 1}/{len(configs)}] {cfg.label()}: already trained, skipped")
        if not (run_dir / "export.json").exists():
            export_run(run_dir, run_dir / (DENSE_NAME if cfg.dense else BUNDLE_NAME), echo=echo)
        result = read_result(run_dir)
        assert result is not None
        export = run_dir / "export.json"
        if export.exists():
            result = {**result, "export": json.loads(export.read_text())}
        results.append(result)
        _write_outputs(results, out_dir)
    return results


def _write_outputs(results: list[dict[str, Any]], out_dir: Path) -> None:
    text = render_table(results)
    if any(r["config"]["scale"] == "fan_in" for r in results):
        text += "\n" + render_scales(results)
    atomic_write_bytes(out_dir / "table.md", text.encode())
    write_plot(results, out_dir / "size.png")


def _size_bytes_paper(r: dict[str, Any]) -> float:
    s = r["stats"]
    return (32 * s["N"] if r["config"]["strategy"] == "dense" else s["N"] + 32 * s["U"]) / 8


def render_scales(results: list[dict[str, Any]]) -> str:
    """Markdown: one row per strategy, the reference (paper) scaling beside fan_in."""
    by_key = {
        (r["config"]["strategy"], r["config"]["ratio"], r["config"]["scale"]): r for r in results
    }
    rows = []
    for (strategy, ratio, scale), r in by_key.items():
        if scale != "paper":
            continue
        other = by_key.get((strategy, ratio, "fan_in"))
        name = strategy if ratio is None else f"{strategy} {ratio:g}"
        fan_in = "" if other is None else f"{100 * other['test_accuracy']:.2f}"
        rows.append(f"| {name} | {100 * r['test_accuracy']:.2f} | {fan_in} |")
    return (
        "| strategy | test acc. %, paper scaling | test acc. %, fan_in scaling |\n"
        "|---|---:|---:|\n" + "\n".join(rows) + "\n"
    )


def render_table(results: list[dict[str, Any]]) -> str:
    """Markdown: one row per run, final-epoch test accuracy (score model and bundle)."""
    head = (
        "| run | U (unique values) | compression (paper) | size (paper) | file size | "
        "test acc. % (final epoch) | bundle test acc. % | s/epoch |\n"
        "|---|---:|---:|---:|---:|---:|---:|---:|\n"
    )
    rows = []
    for r in results:
        export = r.get("export") or {}
        file_size = export.get("bytes")
        bundle_acc = export.get("test_accuracy")
        rows.append(
            f"| {r['label']} | {r['stats']['U']:,} | {100 * r['stats']['paper_compression']:.2f} % | "
            f"{_size_bytes_paper(r) / 1024:.1f} KiB | "
            f"{'-' if file_size is None else f'{file_size / 1024:.1f} KiB'} | "
            f"{100 * r['test_accuracy']:.2f} | "
            f"{'-' if bundle_acc is None else f'{100 * bundle_acc:.2f}'} | "
            f"{r['seconds_per_epoch']:.0f} |"
        )
    return head + "\n".join(rows) + "\n"


def write_plot(results: list[dict[str, Any]], path: Path) -> None:
    """Test accuracy against the paper formula's size (log scale), one marker per
    run; rp ratios connected per scale; dense as a horizontal reference line."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    series: dict[str, list[tuple[float, float, str]]] = {}
    for r in results:
        cfg = r["config"]
        if cfg["strategy"] == "dense":
            acc = 100 * r["test_accuracy"]
            ax.axhline(acc, color="black", linestyle="--", label=f"dense ({acc:.2f} %)")
            continue
        key = cfg["scale"]
        series.setdefault(key, []).append(
            (_size_bytes_paper(r) / 1024, 100 * r["test_accuracy"], r["label"])
        )
    for key, points in series.items():
        points.sort()
        xs, ys, _labels = zip(*points, strict=True)
        ax.plot(xs, ys, marker="o" if key == "paper" else "s", label=f"PEMN, {key} scaling")
        for x, y, label in points:
            ax.annotate(label, (x, y), fontsize=7, xytext=(3, 3), textcoords="offset points")
    ax.set_xscale("log")
    ax.set_xlabel("model size, paper formula (N bits + 32 U bits), KiB")
    ax.set_ylabel("test accuracy, final epoch (%)")
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=8)
    first = results[0]["config"] if results else {}
    ax.set_title(
        f"{first.get('dataset', '')} {first.get('arch', '')} {first.get('arch_config', '')}"
    )
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110)
    plt.close(fig)
    atomic_write_bytes(path, buf.getvalue())
