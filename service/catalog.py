"""The catalog: a typed record of every model's latest version, refreshed from the
store, and the checks a request's inputs must pass before anything is loaded.

A ``ModelRecord`` is the bundle summary the store saved at upload time
(``pemn.bundle.inspect_bundle``), parsed once into a pydantic model: routes and
caches read fields, not string keys of a dict.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from pemn.store import NameInfo
from service.errors import BadInput, ModelNotFound, TooManyItems

__all__ = ["Catalog", "InputRecord", "ModelRecord"]


class InputRecord(BaseModel):
    model_config = ConfigDict(frozen=True, extra="ignore")

    shape: tuple[int, int, int]  # (C, H, W)
    mean: tuple[float, ...]
    std: tuple[float, ...]
    range: tuple[float, float] = (0.0, 1.0)


class ModelRecord(BaseModel):
    """One version of one model, as the API and the caches see it."""

    model_config = ConfigDict(frozen=True, extra="ignore")

    name: str
    version: int
    content_id: str
    size: int = Field(description="bytes of the bundle file")
    arch: str
    config: dict[str, Any]
    strategy: str
    ratio: float | None = None
    scale: str = "paper"
    seed: int
    fingerprint: str = Field(description="the backbone this task runs on")
    file_size: int
    dense_fp32_size: int
    size_ratio: float
    input: InputRecord
    labels: tuple[str, ...]
    metrics: dict[str, Any] = {}
    provenance: dict[str, Any] = {}

    @classmethod
    def from_info(cls, info: NameInfo) -> ModelRecord:
        return cls.model_validate(
            {
                **info.summary,
                "name": info.name,
                "version": info.version,
                "content_id": info.content_id,
                "size": info.size,
            }
        )

    def check_shape(self, shape: tuple[int, ...], max_items: int) -> int:
        """The batch size of inputs of ``shape`` ((C, H, W) or (batch, C, H, W)), or
        ``BadInput`` / ``TooManyItems`` naming the problem. Called on declared shapes
        (a .npy header, an OIP tensor) before anything is allocated."""
        want = self.input.shape
        batch = 1 if len(shape) == 3 else shape[0] if len(shape) == 4 else -1
        if batch < 0 or tuple(shape[-3:]) != tuple(want):
            text = "(" + ", ".join(map(str, shape[:8])) + (", ...)" if len(shape) > 8 else ")")
            raise BadInput(
                f"inputs has shape {text} but model {self.name!r} takes "
                f"(batch, {', '.join(map(str, want))})"
            )
        if batch == 0:
            raise BadInput("inputs holds no items")
        if batch > max_items:
            raise TooManyItems(f"inputs holds {batch} items; the limit is {max_items}")
        return batch

    def check_inputs(
        self, arr: np.ndarray, max_items: int, *, integers: bool = False
    ) -> np.ndarray:
        """``arr`` as a contiguous (batch, C, H, W) float32 array for this model, or
        ``BadInput`` / ``TooManyItems`` naming the problem. uint8 pixels are scaled
        by 1/255; other integers are accepted only with ``integers`` (JSON numbers
        such as 0 and 1)."""
        self.check_shape(arr.shape, max_items)
        if arr.dtype == np.uint8:
            arr = arr.astype(np.float32) / 255.0
        elif arr.dtype.kind == "f":
            arr = arr.astype(np.float32, copy=False)
        elif arr.dtype.kind in "iu" and integers:
            arr = arr.astype(np.float32)
        else:
            raise BadInput(f"inputs has dtype {arr.dtype}; expected float (or uint8 pixels)")
        if arr.ndim == 3:
            arr = arr[None]
        if not np.isfinite(arr).all():
            raise BadInput("inputs holds NaN or infinite values")
        return np.ascontiguousarray(arr)

    @property
    def item_values(self) -> int:
        """Values of one input item (C * H * W)."""
        return math.prod(self.input.shape)


class Catalog:
    """Latest version of every name. Single-threaded (the event loop)."""

    def __init__(self) -> None:
        self._records: dict[str, ModelRecord] = {}

    def __contains__(self, name: str) -> bool:
        return name in self._records

    def __len__(self) -> int:
        return len(self._records)

    def names(self) -> list[str]:
        return sorted(self._records)

    def records(self) -> list[ModelRecord]:
        return [self._records[n] for n in sorted(self._records)]

    def replace_all(self, infos: list[NameInfo]) -> None:
        self._records = {info.name: ModelRecord.from_info(info) for info in infos}

    def upsert(self, info: NameInfo) -> ModelRecord:
        """Record an upload made through this server (a newer or equal version wins)."""
        record = ModelRecord.from_info(info)
        old = self._records.get(info.name)
        if old is None or record.version >= old.version:
            self._records[info.name] = record
        return self._records[info.name]

    def remove(self, name: str) -> ModelRecord | None:
        return self._records.pop(name, None)

    def get(self, name: str) -> ModelRecord | None:
        return self._records.get(name)

    def latest(self, name: str) -> ModelRecord:
        record = self._records.get(name)
        if record is None:
            raise ModelNotFound(f"model {name!r} not found")
        return record

    def fingerprints(self) -> set[str]:
        return {r.fingerprint for r in self._records.values()}
