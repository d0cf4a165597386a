"""The run's metrics log (``metrics.jsonl``) and its training-curve plot (``curves.png``).

One JSON object per line. ``{"kind": "train", ...}`` every ``log_every`` steps:
global step, epoch (fractional), learning rate, mean loss and accuracy over the
steps since the previous record. ``{"kind": "epoch", ...}`` at the end of each
epoch: train loss/accuracy over the epoch, test (and validation) accuracy of the
score model, seconds spent training in the epoch.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from trainer.io import append_jsonl, atomic_write_bytes

__all__ = ["MetricsLog", "plot_curves"]


class MetricsLog:
    """Append-only JSONL log that can be rewound to a checkpoint's step."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def records(self) -> list[dict[str, Any]]:
        if not self.path.exists():
            return []
        return [json.loads(line) for line in self.path.read_text().splitlines() if line.strip()]

    def rewind(self, global_step: int) -> None:
        """Drop records written after ``global_step`` (steps a resumed run will redo)."""
        kept = [r for r in self.records() if r["step"] <= global_step]
        text = "".join(json.dumps(r) + "\n" for r in kept)
        atomic_write_bytes(self.path, text.encode())

    def reset(self) -> None:
        atomic_write_bytes(self.path, b"")

    def write(self, record: dict[str, Any]) -> None:
        append_jsonl(self.path, record)


def plot_curves(records: list[dict[str, Any]], path: Path, title: str) -> None:
    """Loss (left) and accuracy (right) against epochs, written atomically as PNG."""
    import io

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    train = [r for r in records if r["kind"] == "train"]
    epochs = [r for r in records if r["kind"] == "epoch"]
    fig, (ax_loss, ax_acc) = plt.subplots(1, 2, figsize=(10, 4))
    ax_loss.plot([r["epoch"] for r in train], [r["loss"] for r in train], label="train (window)")
    ax_loss.set_xlabel("epoch")
    ax_loss.set_ylabel("cross-entropy loss")
    ax_loss.grid(alpha=0.3)
    ax_loss.legend()
    ax_acc.plot(
        [r["epoch"] for r in train],
        [100 * r["accuracy"] for r in train],
        alpha=0.5,
        label="train (window)",
    )
    for key, label in (("test_accuracy", "test"), ("val_accuracy", "validation")):
        points = [(r["epoch"], 100 * r[key]) for r in epochs if r.get(key) is not None]
        if points:
            ax_acc.plot(*zip(*points, strict=True), marker="o", label=label)
    ax_acc.set_xlabel("epoch")
    ax_acc.set_ylabel("accuracy (%)")
    ax_acc.grid(alpha=0.3)
    ax_acc.legend()
    fig.suptitle(title)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100)
    plt.close(fig)
    atomic_write_bytes(path, buf.getvalue())
