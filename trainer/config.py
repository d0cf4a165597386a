"""The training configuration, declared once: one pydantic model whose fields carry
their default, bounds, help text and command-line group.

``TrainConfig`` holds everything that decides what a run computes. Fields marked
``runtime`` (``RUNTIME_FIELDS``) only decide *how* it runs (device, threads, logging);
a checkpoint may be resumed under different values of those, never of the others.
``trainer.flags`` turns the fields into the command line; nothing else repeats them.

Building a config validates it; a bad value raises ``ConfigError`` with one sentence
naming the flag (the core's ``Strategy`` checks seed, ratio and scale).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)

from pemn.archs import list_archs, parse_config_items
from pemn.images import RESIZE_RULES
from pemn.prototype import SCALES, STRATEGIES, Strategy
from trainer.data.datasets import DATASETS
from trainer.data.folder import FOLDER_PREFIX
from trainer.errors import ConfigError

__all__ = ["ALL_STRATEGIES", "GROUPS", "RUNTIME_FIELDS", "TrainConfig", "flag_name"]

ALL_STRATEGIES = ("dense", *STRATEGIES)
# command-line groups, in the order `--help` shows them
GROUPS = {
    "model": "model",
    "data": "data",
    "optim": "optimisation (AdamW, warm-up / linear decay per step)",
    "distill": "distillation (a dense teacher's logits as a second target; training only)",
    "system": "system",
}


def _field(default: Any, help: str, group: str, **meta: Any) -> Any:
    """A field: its default, help text and command-line group; bounds (``ge``, ``gt``,
    ``le``, ``lt``) go to pydantic, the rest to the command line (``choices``, ``flag``
    and ``short``: other flag names, ``metavar``, ``runtime``: may change on resume)."""
    assert group in GROUPS
    bounds = {k: meta.pop(k) for k in ("ge", "gt", "le", "lt") if k in meta}
    extra = {"group": group, **meta}
    if default is dict:
        return Field(default_factory=dict, description=help, json_schema_extra=extra)
    return Field(default, description=help, json_schema_extra=extra, **bounds)


def _extra(name: str) -> dict[str, Any]:
    """The command-line metadata of field ``name`` (see ``_field``)."""
    extra = TrainConfig.model_fields[name].json_schema_extra
    return extra if isinstance(extra, dict) else {}


class TrainConfig(BaseModel):
    """One training run (frozen: derive another with ``replace``)."""

    model_config = ConfigDict(frozen=True, extra="forbid", allow_inf_nan=False)

    # --- model ---
    arch: str = _field("convmixer", "architecture", "model", choices=list_archs())
    arch_config: dict[str, Any] = _field(
        dict,
        "architecture config, repeatable (e.g. -c width=128 -c depth=4); "
        "the arch's defaults fill the rest",
        "model",
        flag="--config",
        short="-c",
        metavar="KEY=VALUE",
    )
    strategy: str = _field(
        "mp",
        "dense (baseline, all weights trained) or a PEMN strategy",
        "model",
        choices=list(ALL_STRATEGIES),
    )
    ratio: float | None = _field(
        None,
        "rp only: ratio of unique values, e.g. 1e-2; "
        "unique values = int(ratio * largest layer size) + 1",
        "model",
    )
    scale: str = _field(
        "paper",
        "mp/rp value scaling: paper (largest layer's fan_in) or fan_in (each layer's own)",
        "model",
        choices=list(SCALES),
    )
    density: float = _field(0.5, "fraction of weights each mask keeps", "model", gt=0, lt=1)
    seed: int = _field(0, "seed of fixed weights, scores, split, order, augmentation", "model")
    # --- data ---
    dataset: str = _field(
        "fashion-mnist",
        "dataset, or folder:PATH for your own images, one folder per class "
        "(PATH/train/<class>/*.png and PATH/test/<class>/..., or PATH/<class>/...)",
        "data",
        metavar="{" + ",".join(DATASETS) + ",folder:PATH}",
    )
    data_dir: str | None = _field(
        None,
        "directory of the dataset's files (default: per dataset; see trainer/data)",
        "data",
        runtime=True,
    )
    val_size: int = _field(0, "training examples held out for validation", "data", ge=0)
    train_limit: int | None = _field(None, "use only the first N training examples", "data", ge=1)
    test_limit: int | None = _field(None, "use only the first N test examples", "data", ge=1)
    val_fraction: float = _field(
        0.2,
        "folder:PATH without train/ and test/: share of each class held out as the test "
        "split (fixed seed)",
        "data",
        gt=0,
        lt=1,
    )
    image_size: int | None = _field(
        None,
        "folder:PATH: resize images to N x N (default: the first training image's size)",
        "data",
        ge=1,
        le=1024,
    )
    channels: int | None = _field(
        None,
        "folder:PATH: 1 (greyscale) or 3 (RGB) (default: 1 when every image is greyscale)",
        "data",
        choices=[1, 3],
    )
    resize: str = _field(
        "resize",
        "how images are fitted to the input size, recorded in the bundle for the server: "
        "resize (whole image) or resize_crop (cover, then centre crop)",
        "data",
        choices=list(RESIZE_RULES),
    )
    flip: bool = _field(True, "random horizontal flips (default: on, except for mnist)", "data")
    crop_pad: int = _field(0, "random crops with this zero padding per side, 0 = off", "data", ge=0)
    # --- optimisation: AdamW, per-step piecewise-linear learning rate (trainer.schedule) ---
    epochs: int = _field(3, "passes over the training set", "optim", ge=1)
    batch_size: int = _field(128, "examples per step (BatchNorm needs two)", "optim", ge=2)
    lr_max: float = _field(0.01, "peak learning rate", "optim", gt=0)
    weight_decay: float = _field(
        0.005, "AdamW weight decay (hits the scores too, as in the paper)", "optim", ge=0
    )
    warmup: float = _field(0.4, "fraction of steps warming up 0 -> lr-max", "optim", ge=0, le=1)
    decay_end: float = _field(
        0.8, "fraction of steps where the lr reaches lr-max * lr-floor", "optim", ge=0, le=1
    )
    lr_floor: float = _field(
        0.05, "lr at --decay-end relative to lr-max, then linear to 0", "optim", ge=0, le=1
    )
    label_smoothing: float = _field(
        0.0, "label smoothing of the labels' cross-entropy", "optim", ge=0, lt=1
    )
    # --- distillation (trainer.teacher) ---
    teacher: str | None = _field(
        None,
        "dense model file written by this trainer (--strategy dense --out x.safetensors) "
        "on the same dataset; the student also learns its softened logits",
        "distill",
        metavar="FILE",
    )
    # 0.5 by measurement: rp 1e-2, 3 epochs, +0.44 points at 0.5, -0.25 at 0.9 (docs/results.md)
    distill_weight: float = _field(
        0.5, "weight of the teacher's term (1 - this for the labels')", "distill", ge=0, le=1
    )
    distill_temperature: float = _field(
        4.0, "temperature softening both logits", "distill", gt=0, le=100
    )
    # --- system (runtime=True: may change on resume) ---
    device: str = _field(
        "auto", "auto (cuda if available, else cpu), cpu, cuda or cuda:N", "system", runtime=True
    )
    threads: int | None = _field(
        None, "torch CPU threads (default: torch's choice)", "system", ge=1, runtime=True
    )
    amp: bool = _field(
        True, "mixed precision (float16 autocast + grad scaling) on CUDA; ignored on CPU", "system"
    )
    channels_last: bool = _field(
        True, "channels-last memory format, faster convolutions on CPU", "system"
    )
    eval_batch_size: int = _field(
        1000, "examples per evaluation batch", "system", ge=1, runtime=True
    )
    log_every: int = _field(50, "steps between metrics.jsonl records", "system", ge=1, runtime=True)
    checkpoint_every: int = _field(
        0, "steps between checkpoints, 0 = each epoch end", "system", ge=0, runtime=True
    )

    def __init__(self, **values: Any) -> None:
        try:
            super().__init__(**values)
        except ValidationError as exc:
            raise ConfigError(_explain(exc)) from None

    @model_validator(mode="before")
    @classmethod
    def _flip_default(cls, values: Any) -> Any:
        # flips turn digits into other digits: off by default for mnist
        if isinstance(values, dict) and values.get("flip") is None:
            values = {**values, "flip": values.get("dataset") != "mnist"}
        return values

    @field_validator("arch_config", mode="before")
    @classmethod
    def _config_items(cls, value: Any) -> Any:
        # the command line gives ["width=128", "depth=4"]
        if isinstance(value, list | tuple):
            return parse_config_items(value)
        return value

    @field_validator("dataset")
    @classmethod
    def _dataset(cls, value: str) -> str:
        if value.startswith(FOLDER_PREFIX):
            if not value[len(FOLDER_PREFIX) :].strip():
                raise ValueError("folder:PATH needs a path, e.g. folder:~/pictures")
            return value
        if value not in DATASETS:
            raise ValueError(
                f"unknown dataset {value!r}; choose one of {', '.join(DATASETS)} or folder:PATH"
            )
        return value

    @field_validator("arch", "strategy", "scale", "resize", "channels")
    @classmethod
    def _known(cls, value: Any, info: ValidationInfo) -> Any:
        if value is None:
            return value
        name = str(info.field_name)
        choices = _extra(name)["choices"]
        if value not in choices:
            what = "architecture" if name == "arch" else name
            raise ValueError(
                f"unknown {what} {value!r}; choose one of {', '.join(map(str, choices))}"
            )
        return value

    @model_validator(mode="after")
    def _consistent(self) -> TrainConfig:
        if self.strategy == "rp" and self.ratio is None:
            raise ValueError("strategy rp needs --ratio (e.g. 1e-2)")
        if self.dense and (self.ratio is not None or self.scale != "paper"):
            raise ValueError("the dense baseline takes neither --ratio nor --scale")
        self.pemn_strategy()  # the core checks seed, ratio and scale
        if not self.warmup <= self.decay_end:
            raise ValueError("need 0 <= --warmup <= --decay-end <= 1")
        folder = self.dataset.startswith(FOLDER_PREFIX)
        if self.teacher is not None and not self.teacher.strip():
            raise ValueError("--teacher needs a file")
        if not folder and (self.image_size is not None or self.channels is not None):
            raise ValueError("--image-size and --channels apply to folder:PATH datasets only")
        return self

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

    def replace(self, **changes: Any) -> TrainConfig:
        """A validated copy with ``changes`` applied."""
        return TrainConfig(**{**self.to_dict(), **changes})

    def to_dict(self) -> dict[str, Any]:
        return self.model_dump()

    @classmethod
    def from_dict(cls, values: Mapping[str, Any]) -> TrainConfig:
        return cls(**values)

    def identity(self) -> dict[str, Any]:
        """The fields that decide what is computed (everything but ``RUNTIME_FIELDS``)."""
        return {k: v for k, v in self.to_dict().items() if k not in RUNTIME_FIELDS}


RUNTIME_FIELDS = frozenset(n for n in TrainConfig.model_fields if _extra(n).get("runtime"))


def flag_name(field: str) -> str:
    """The command-line flag of a config field (``lr_max`` -> ``--lr-max``)."""
    return str(_extra(field).get("flag", "--" + field.replace("_", "-")))


def _explain(exc: ValidationError) -> str:
    """One sentence for all of a validation's errors, naming the flags."""
    parts: list[str] = []
    for err in exc.errors():
        loc: Sequence[Any] = err["loc"]
        name = str(loc[0]) if loc else ""
        if err["type"] == "extra_forbidden":
            parts.append(f"unknown config key {name!r}")
        elif err["type"] == "value_error":  # our own sentences and the core's
            parts.append(str(err["ctx"]["error"]))
        else:
            msg = err["msg"][:1].lower() + err["msg"][1:]
            parts.append(f"{flag_name(name)}: {msg}, got {err['input']!r}")
    return "; ".join(parts)
