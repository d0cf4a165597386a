"""The norm-state precisions of format 2.0 (docs/bundle-format.md, section 7.1):
rounding to nearest-even as torch rounds, exact conversion back, the overflow rule."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from pemn.archs import create_model
from pemn.bundle import InputSpec, read_bundle, write_bundle
from pemn.bundle.dtypes import decode_state, encode_state
from pemn.errors import InvalidParameterError
from pemn.prototype import Strategy
from pemn.testing import deterministic_masks, make_model_state


def _values() -> np.ndarray:
    rng = np.random.default_rng(0)
    v = rng.standard_normal(100_000).astype(np.float32) * np.float32(100.0)
    # ties and near-ties of both formats, subnormals, signed zeros, range ends
    bits = np.array([0x3F808000, 0x3F818000, 0x3F807FFF, 0x00000001, 0x80000000], np.uint32)
    extra = np.array([65504.0, -65504.0, 65519.0, 6e-8, 1e-30, 0.0, 3.0e38], np.float32)
    return np.concatenate([v, bits.view(np.float32), extra])


@pytest.mark.parametrize(
    ("header", "torch_dtype"), [("F16", torch.float16), ("BF16", torch.bfloat16)]
)
def test_rounding_is_torchs_round_to_nearest_even(header: str, torch_dtype: torch.dtype) -> None:
    x = _values()
    stored, bad = encode_state(x, header)
    want = torch.from_numpy(x).to(torch_dtype).float().numpy()
    got = decode_state(stored, header)
    finite = np.isfinite(want)
    assert np.array_equal(got[finite], want[finite])
    assert np.array_equal(np.signbit(got[finite]), np.signbit(want[finite]))  # -0.0 stays
    # the first value that does not fit is reported (3e38 in float16: inf; bfloat16 keeps it)
    assert bad == (int(np.flatnonzero(~finite)[0]) if not finite.all() else None)
    assert (bad is not None) == (header == "F16")


def test_float32_is_stored_as_is() -> None:
    x = _values()
    stored, bad = encode_state(x, "F32")
    assert bad is None and stored.tobytes() == x.astype("<f4").tobytes()


def _write(weight_scale: float, **options) -> bytes:
    model = create_model("mlp", in_channels=1, image_size=4, hidden=[6])
    state = make_model_state(model, 0)
    state["norms.0.weight"] = state["norms.0.weight"] * weight_scale
    return write_bundle(
        arch="mlp",
        config={"in_channels": 1, "image_size": 4, "hidden": [6]},
        strategy=Strategy("mp"),
        density=0.5,
        masks=deterministic_masks(model, 0.5, 0),
        trained=state,
        input_spec=InputSpec(shape=(1, 4, 4), mean=(0.5,), std=(0.25,)),
        labels=[str(i) for i in range(10)],
        **options,
    )


def test_a_value_beyond_float16_makes_the_default_float32() -> None:
    assert read_bundle(_write(1.0)).state_dtype == "F16"
    big = read_bundle(_write(1e5))  # scale = weight / sqrt(var + eps) > 65520
    assert big.state_dtype == "F32" and float(np.abs(big.state).max()) > 65520
    assert read_bundle(_write(1e5, state_dtype="bfloat16")).state_dtype == "BF16"


def test_float16_asked_for_and_out_of_range_is_an_error_naming_the_value() -> None:
    with pytest.raises(InvalidParameterError, match=r"norms\.0\.scale\[\d\].*float32"):
        _write(1e5, state_dtype="float16")


@pytest.mark.parametrize(
    ("options", "match"),
    [
        ({"state_dtype": "float8"}, "state_dtype"),
        ({"format_version": "1.1"}, "format_version"),
        ({"format_version": "1.0", "state_dtype": "bfloat16"}, "format 1.0"),
    ],
)
def test_bad_writer_options(options: dict, match: str) -> None:
    with pytest.raises(InvalidParameterError, match=match):
        _write(1.0, **options)
