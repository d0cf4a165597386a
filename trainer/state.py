"""The typed state of a training run: where it is and its running sums.

``RunState`` is what a checkpoint holds besides tensors (with the config); its
``counters()`` keep the JSON shape checkpoints have always had, so older
checkpoints resume::

    {"window": {"loss", "correct", "seen"},            since the last metrics record
     "epoch": {"loss", "correct", "seen", "seconds"},  the epoch in progress
     "epochs": [summary, ...]}                         one per finished epoch
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

__all__ = ["RunState", "Tally"]


@dataclass
class Tally:
    """Sums over a span of steps: loss (summed per example), correct, examples seen."""

    loss: float = 0.0
    correct: int = 0
    seen: int = 0

    def add(self, mean_loss: float, correct: int, n: int) -> None:
        self.loss += mean_loss * n
        self.correct += correct
        self.seen += n

    @property
    def mean_loss(self) -> float:
        return self.loss / self.seen

    @property
    def accuracy(self) -> float:
        return self.correct / self.seen


@dataclass
class RunState:
    """Position (epoch in progress, steps of it done, steps in all) and running sums."""

    epoch: int = 0  # the epoch in progress (== epochs when training is finished)
    step: int = 0  # steps of that epoch already taken
    global_step: int = 0  # steps taken in total
    window: Tally = field(default_factory=Tally)  # since the last metrics.jsonl record
    epoch_tally: Tally = field(default_factory=Tally)  # the epoch in progress
    epoch_seconds: float = 0.0  # time spent stepping in the epoch in progress
    epochs: list[dict[str, Any]] = field(default_factory=list)  # finished epochs' summaries

    def counters(self) -> dict[str, Any]:
        """The running sums as the checkpoint stores them (JSON)."""
        return {
            "window": asdict(self.window),
            "epoch": {**asdict(self.epoch_tally), "seconds": self.epoch_seconds},
            "epochs": list(self.epochs),
        }

    @classmethod
    def restore(cls, epoch: int, step: int, global_step: int, counters: dict[str, Any]) -> RunState:
        """The state a checkpoint saved (``counters`` as ``counters()`` wrote them)."""
        ep = dict(counters["epoch"])
        seconds = float(ep.pop("seconds"))
        return cls(
            epoch=epoch,
            step=step,
            global_step=global_step,
            window=Tally(**counters["window"]),
            epoch_tally=Tally(**ep),
            epoch_seconds=seconds,
            epochs=list(counters["epochs"]),
        )

    def next_epoch(self, summary: dict[str, Any]) -> None:
        """Record the finished epoch's summary and start the next one."""
        self.epochs.append(summary)
        self.epoch, self.step = self.epoch + 1, 0
        self.epoch_tally, self.epoch_seconds = Tally(), 0.0
