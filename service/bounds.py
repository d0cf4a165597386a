"""Bounds on a declared tensor, checked before anything is allocated or reshaped.

One place for every decoder of ``/predict`` and ``/v2/.../infer`` (nested JSON
lists, base64 ``.npy``, OIP JSON tensors and binary tensors): the number of
dimensions, each dimension, the element count and the bytes, against the request
limits and then the model's input spec (``ModelRecord.check_shape``).

The element count is multiplied out with Python integers (no int64 to overflow)
and the product stops as soon as it passes the limit, so a shape such as
``[2**32, 2**32]`` or seventy dimensions costs a few comparisons, never an
allocation.
"""

from __future__ import annotations

from collections.abc import Sequence

from service.catalog import ModelRecord
from service.errors import BadInput, TooManyItems

__all__ = ["MAX_DIMS", "check_tensor"]

MAX_DIMS = 64  # numpy's own limit; a model here takes 3 or 4


def _shape_text(shape: Sequence[object]) -> str:
    head = ", ".join(map(str, shape[:8]))
    return f"({head}, ...)" if len(shape) > 8 else f"({head})"


def check_tensor(
    shape: Sequence[object],
    itemsize: int,
    record: ModelRecord,
    max_items: int,
    field: str = "inputs",
) -> int:
    """The batch size of a tensor of ``shape`` with ``itemsize``-byte values for
    ``record``, or a 4xx domain error naming ``field`` and the limit it breaks:

    * at most ``MAX_DIMS`` dimensions, each a non-negative integer;
    * at most ``max_items * C*H*W`` values and ``itemsize`` times that in bytes
      (``TooManyItems``, 413);
    * then the model's own shape and the item limit (``check_shape``).
    """
    if len(shape) > MAX_DIMS:
        raise BadInput(
            f"{field} has {len(shape)} dimensions {_shape_text(shape)}; the limit is {MAX_DIMS}"
        )
    for i, d in enumerate(shape):
        if not isinstance(d, int) or isinstance(d, bool) or d < 0:
            raise BadInput(f"{field} shape[{i}] is {d!r}; a dimension is an integer >= 0")
    max_values = max_items * record.item_values
    count = 1
    for d in shape:
        count *= d  # type: ignore[operator]
        if count > max_values:
            raise TooManyItems(
                f"{field} of shape {_shape_text(shape)} holds more than {max_values} values: "
                f"the limit is {max_items} items of {record.item_values} values "
                f"({max_values * itemsize} bytes at {itemsize} bytes a value)"
            )
    return record.check_shape(tuple(shape), max_items)  # type: ignore[arg-type]
