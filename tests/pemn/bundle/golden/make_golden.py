"""Write the golden bundles of this directory.

    python -m tests.pemn.bundle.golden.make_golden

The bundles come from ``pemn.testing.make_bundle``, whose masks and norm
tensors are drawn from the documented generator, so their bytes depend only on
the format and the writer. ``test_golden.py`` checks that the writer still
produces these exact bytes and records their sha256. Regenerate them only when
the format changes on purpose (see docs/bundle-format.md, section 12), and
update the recorded hashes in the same commit.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pemn.prototype import Strategy
from pemn.testing import make_bundle

HERE = Path(__file__).resolve().parent


def _mlp(**options: Any) -> bytes:
    # BatchNorm (folded state), rp strategy, masks with padding bits
    return make_bundle(
        "mlp",
        {"in_channels": 1, "image_size": 5, "hidden": [7]},
        Strategy("rp", seed=3, ratio=0.1),
        density=0.25,
        mask_seed=1,
        labels=["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"],
        metrics={"test_accuracy": 0.875, "epochs": 3},
        **options,
    )


def _vit(**options: Any) -> bytes:
    # LayerNorm state, mp strategy with fan_in scale, embedded prototype
    return make_bundle(
        "vit",
        {"in_channels": 1, "image_size": 8, "width": 8, "depth": 1, "heads": 2, "patch": 4},
        Strategy("mp", seed=5, scale="fan_in"),
        density=0.5,
        mask_seed=2,
        embed_prototype=True,
        **options,
    )


def build() -> dict[str, bytes]:
    """``{file name: bytes}`` of every golden bundle."""
    return {
        "mlp-rp-1.0.pemn": _mlp(format_version="1.0"),
        "vit-mp-embedded-1.0.pemn": _vit(format_version="1.0"),
        "mlp-rp.pemn": _mlp(),  # 2.0, state float16 (the default)
        "mlp-rp-bf16.pemn": _mlp(state_dtype="bfloat16"),
        "vit-mp-embedded-f32.pemn": _vit(state_dtype="float32"),
    }


def main() -> None:
    for name, data in build().items():
        (HERE / name).write_bytes(data)
        print(f"wrote {HERE / name} ({len(data)} bytes)")


if __name__ == "__main__":
    main()
