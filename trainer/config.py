"""The training configuration: one dataclass, one comment per field.

``TrainConfig`` holds everything that decides what a run computes. Fields listed in
``RUNTIME_FIELDS`` only decide *how* it runs (device, threads, logging); a checkpoint
may be resumed under different values of those, never of the others.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import Any

from pemn.archs import list_archs
from pemn.images import RESIZE_RULES
from pemn.prototype import SCALES, STRATEGIES, Strategy
from trainer.data.datasets import DATASETS
from trainer.errors import ConfigError

__all__ = ["ALL_STRATEGIES", "RUNTIME_FIELDS", "TrainConfig"]

ALL_STRATEGIES = ("dense", *STRATEGIES)
RUNTIME_FIELDS = frozenset(
    {"data_dir", "device", "threads", "eval_batch_size", "log_every", "checkpoint_every"}
)


@dataclass
class TrainConfig:
    # --- model ---
    arch: str = "convmixer"  # architecture name in pemn.archs (convmixer, vit, resnet20, mlp, ...)
    arch_config: dict[str, Any] = field(
        default_factory=dict
    )  # e.g. {"width": 128}; defaults fill the rest
    strategy: str = "mp"  # dense (baseline: all weights trained) or PEMN: mask, one_layer, mp, rp
    ratio: float | None = None  # rp only: unique values = int(ratio * largest layer size) + 1
    scale: str = (
        "paper"  # mp/rp scaling: paper (largest layer's fan_in) or fan_in (each layer's own)
    )
    density: float = 0.5  # fraction of each layer's weights a mask keeps (the paper: 0.5)
    seed: int = 0  # seeds the fixed weights, score init, validation split, data order, augmentation
    # --- data ---
    dataset: str = "fashion-mnist"  # fashion-mnist, mnist, cifar10, cifar100, or folder:PATH
    data_dir: str | None = (
        None  # directory of the dataset files (default: per dataset, see trainer.data)
    )
    val_size: int = 0  # hold out this many training examples as a validation set (0 = none)
    train_limit: int | None = None  # use only the first N training examples (smoke tests)
    test_limit: int | None = None  # use only the first N test examples (smoke tests)
    # folder:PATH datasets only (trainer/data/folder.py):
    val_fraction: float = (
        0.2  # one folder (no train/ and test/): this share per class is the test split
    )
    image_size: int | None = None  # images resized to N x N (None: the first training image's size)
    channels: int | None = None  # 1 or 3 (None: 1 when every image is greyscale, else 3)
    resize: str = (
        "resize"  # resize (whole image) or resize_crop (cover, centre crop); in the bundle
    )
    flip: bool = True  # random horizontal flips
    crop_pad: int = 0  # random crops after zero-padding each side by this many pixels (0 = off)
    # --- optimisation: AdamW, per-step piecewise-linear learning rate ---
    epochs: int = 3  # passes over the training set
    batch_size: int = 128  # examples per step
    lr_max: float = 0.01  # peak learning rate
    weight_decay: float = (
        0.005  # AdamW decoupled weight decay (hits the scores too, as in the paper)
    )
    warmup: float = 0.4  # fraction of steps of linear warm-up from 0 to lr_max
    decay_end: float = (
        0.8  # fraction of steps at which the lr has decayed linearly to lr_max * lr_floor
    )
    lr_floor: float = 0.05  # lr at decay_end relative to lr_max (then linear to 0 at the end)
    # --- system (RUNTIME_FIELDS: may change on resume) ---
    device: str = "auto"  # auto (cuda if available, else cpu), cpu, cuda, cuda:1, ...
    threads: int | None = None  # torch CPU threads (None = torch's default)
    amp: bool = (
        True  # mixed precision (float16 autocast + grad scaling) when on CUDA; ignored on CPU
    )
    channels_last: bool = (
        True  # channels-last memory format (about 1.7x faster on CPU for ConvMixer)
    )
    eval_batch_size: int = 1000  # examples per evaluation batch
    log_every: int = 50  # steps between metrics.jsonl records
    checkpoint_every: int = 0  # steps between checkpoints (0 = at the end of every epoch only)

    @property
    def dense(self) -> bool:
        return self.strategy == "dense"

    def pemn_strategy(self) -> Strategy:
        """The fixed-weight strategy; the dense baseline uses ``mask``'s values as init."""
        if self.dense:
            return Strategy("mask", seed=self.seed)
        return Strategy(self.strategy, seed=self.seed, ratio=self.ratio, scale=self.scale)

    def label(self) -> str:
        """Short name: ``dense``, ``mp``, ``rp-0.01``, ``mp-fan_in``, ..."""
        parts = [self.strategy]
        if self.ratio is not None:
            parts.append(f"{self.ratio:g}")
        if self.scale != "paper":
            parts.append(self.scale)
        return "-".join(parts)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> TrainConfig:
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - names)
        if unknown:
            raise ConfigError(f"unknown config keys: {', '.join(unknown)}")
        return cls(**values)

    def identity(self) -> dict[str, Any]:
        """The fields that decide what is computed (everything but ``RUNTIME_FIELDS``)."""
        return {k: v for k, v in self.to_dict().items() if k not in RUNTIME_FIELDS}

    def validate(self) -> None:
        """Raise ``ConfigError`` (or the core's ``InvalidParameterError``) on bad values."""
        if self.arch not in list_archs():
            raise ConfigError(
                f"unknown architecture {self.arch!r}; choose one of {', '.join(list_archs())}"
            )
        if self.strategy not in ALL_STRATEGIES:
            raise ConfigError(
                f"unknown strategy {self.strategy!r}; choose one of {', '.join(ALL_STRATEGIES)}"
            )
        folder = self.dataset.startswith("folder:")
        if self.dataset not in DATASETS and not folder:
            raise ConfigError(
                f"unknown dataset {self.dataset!r}; choose one of {', '.join(DATASETS)} "
                "or folder:PATH"
            )
        if folder and not self.dataset[len("folder:") :].strip():
            raise ConfigError("--dataset folder:PATH needs a path, e.g. folder:~/pictures")
        if not folder and (self.image_size is not None or self.channels is not None):
            raise ConfigError("--image-size and --channels apply to folder:PATH datasets only")
        if not 0 < self.val_fraction < 1:
            raise ConfigError(f"--val-fraction must be in (0, 1), got {self.val_fraction}")
        if self.image_size is not None and not 1 <= self.image_size <= 1024:
            raise ConfigError(f"--image-size must be in [1, 1024], got {self.image_size}")
        if self.channels not in (None, 1, 3):
            raise ConfigError(f"--channels must be 1 or 3, got {self.channels}")
        if self.resize not in RESIZE_RULES:
            raise ConfigError(
                f"unknown --resize {self.resize!r}; choose one of {', '.join(RESIZE_RULES)}"
            )
        if self.scale not in SCALES:
            raise ConfigError(f"unknown scale {self.scale!r}; choose one of {', '.join(SCALES)}")
        if self.strategy == "rp" and self.ratio is None:
            raise ConfigError("strategy rp needs --ratio (e.g. 1e-2)")
        if self.dense and (self.ratio is not None or self.scale != "paper"):
            raise ConfigError("the dense baseline takes neither --ratio nor --scale")
        self.pemn_strategy()  # the core checks ratio, scale and seed
        if not 0 < self.density < 1:
            raise ConfigError(f"--density must be in (0, 1), got {self.density}")
        for name in ("epochs", "batch_size", "eval_batch_size", "log_every"):
            if getattr(self, name) < 1:
                raise ConfigError(f"--{name.replace('_', '-')} must be >= 1")
        for name in ("val_size", "crop_pad", "checkpoint_every"):
            if getattr(self, name) < 0:
                raise ConfigError(f"--{name.replace('_', '-')} must be >= 0")
        if self.batch_size < 2:
            raise ConfigError("--batch-size must be >= 2 (BatchNorm needs two examples)")
        for name in ("train_limit", "test_limit", "threads"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise ConfigError(f"--{name.replace('_', '-')} must be >= 1")
        if not (math.isfinite(self.lr_max) and self.lr_max > 0):
            raise ConfigError("--lr-max must be a positive number")
        if not (math.isfinite(self.weight_decay) and self.weight_decay >= 0):
            raise ConfigError("--weight-decay must be >= 0")
        if not 0 <= self.warmup <= self.decay_end <= 1:
            raise ConfigError("need 0 <= --warmup <= --decay-end <= 1")
        if not 0 <= self.lr_floor <= 1:
            raise ConfigError("--lr-floor must be in [0, 1]")
