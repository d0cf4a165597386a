"""Fuzzing the tensor decoders (hypothesis): nested JSON lists, base64 ``.npy``, OIP
JSON tensors and OIP binary tensors, for a real model record.

Each decoder either returns a contiguous (batch, 1, 28, 28) float32 array of finite
values within the item limit, or raises a 4xx domain error (``BadInput`` or
``TooManyItems``): anything else would be a server error. The shapes drawn mix
plausible ones with hostile ones (huge dimensions whose product overflows int64,
up to 80 dimensions, negative sizes); the ``.npy`` files get random headers and
truncated or padded data. A bounded run (``max_examples`` per decoder) and a short
one over HTTP against the real server (no answer >= 500).
"""

from __future__ import annotations

import base64
import io
import json

import httpx
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pemn.bundle import inspect_bundle, read_bundle
from pemn.testing import make_bundle
from service.catalog import ModelRecord
from service.errors import BadInput, DomainError, TooManyItems, domain_status
from service.inputs import from_lists, from_npy_b64, from_oip, from_oip_binary
from tests.service.conftest import API_KEY
from tests.service.helpers import upload

MAX_ITEMS = 16
DATATYPES = ["FP32", "FP64", "FP16", "UINT8", "INT32", "BOOL", "BYTES"]
EXAMPLES = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])

_BUNDLE = make_bundle(mask_seed=9)
RECORD = ModelRecord.model_validate(
    {
        **inspect_bundle(_BUNDLE),
        "name": "fuzz",
        "version": 1,
        "content_id": read_bundle(_BUNDLE).content_id,
        "size": len(_BUNDLE),
    }
)

dims = st.one_of(
    st.sampled_from([0, 1, 2, 3, 28, 27, 29]),
    st.integers(-3, 40),
    st.sampled_from([2**31, 2**32, 2**63 - 1, 2**63, 2**64, 10**30]),
)
shapes = st.one_of(
    st.lists(dims, max_size=6),
    st.lists(st.just(1), min_size=60, max_size=80),
    st.builds(lambda b: [b, 1, 28, 28], st.integers(0, MAX_ITEMS + 2)),
    st.just([1, 28, 28]),
)
numbers = st.one_of(
    st.floats(allow_nan=True, allow_infinity=True, width=32),
    st.integers(-(2**70), 2**70),
    st.booleans(),
    st.text(max_size=3),
    st.none(),
)


def _accepts(decode, *args) -> None:  # type: ignore[no-untyped-def]
    try:
        arr = decode(*args)
    except DomainError as exc:
        assert isinstance(exc, BadInput | TooManyItems), exc
        assert 400 <= domain_status(exc) < 500
        assert exc.message
        return
    assert arr.dtype == np.float32 and arr.flags.c_contiguous
    assert arr.ndim == 4 and arr.shape[1:] == (1, 28, 28) and 1 <= arr.shape[0] <= MAX_ITEMS
    assert np.isfinite(arr).all()


def _nest(flat: list[object], shape: list[int]) -> object:
    if not shape:
        return flat[0] if flat else 0.0
    return [_nest(flat, shape[1:]) for _ in range(min(shape[0], 3))]


@EXAMPLES
@given(shape=shapes, values=st.lists(numbers, max_size=8), fill=st.floats(0, 1))
def test_nested_lists(shape: list[int], values: list[object], fill: float) -> None:
    small = [d if 0 <= d <= 40 else 2 for d in shape][:6]
    nested = _nest(values or [fill], small)
    _accepts(from_lists, nested if isinstance(nested, list) else [nested], RECORD, MAX_ITEMS)
    if all(0 <= d <= MAX_ITEMS for d in shape[:1]) and shape[1:] == [1, 28, 28]:
        good = np.full(shape, fill, np.float32).tolist()
        _accepts(from_lists, good, RECORD, MAX_ITEMS)


@st.composite
def npy_files(draw: st.DrawFn) -> bytes:
    dtype = draw(st.sampled_from(["<f4", "<f8", "|u1", "<i4", ">f4", "<f2", "|O", "<U3", "|V8"]))
    shape = draw(shapes)
    fortran = draw(st.booleans())
    shape_text = "(" + "".join(f"{d}, " for d in shape) + ")"
    header = f"{{'descr': '{dtype}', 'fortran_order': {fortran}, 'shape': {shape_text}, }}"
    header = draw(st.one_of(st.just(header), st.text(max_size=60)))
    body = header.encode("latin-1", "replace")
    pad = (-(10 + len(body) + 1)) % 64
    head = b"\x93NUMPY\x01\x00" + (len(body) + pad + 1).to_bytes(2, "little") + body
    head += b" " * pad + b"\n"
    data_len = draw(st.integers(0, 4 * 784 * 3))
    return head + draw(st.binary(min_size=data_len, max_size=data_len))


@EXAMPLES
@given(raw=st.one_of(npy_files(), st.binary(max_size=200)))
def test_npy(raw: bytes) -> None:
    _accepts(from_npy_b64, base64.b64encode(raw).decode(), RECORD, MAX_ITEMS)


def test_npy_of_a_real_array_is_accepted() -> None:
    buf = io.BytesIO()
    np.save(buf, np.random.default_rng(0).random((3, 1, 28, 28), dtype=np.float32))
    arr = from_npy_b64(base64.b64encode(buf.getvalue()).decode(), RECORD, MAX_ITEMS)
    assert arr.shape == (3, 1, 28, 28)


@EXAMPLES
@given(
    shape=shapes,
    datatype=st.sampled_from(DATATYPES),
    data=st.one_of(st.lists(numbers, max_size=10), st.lists(st.lists(numbers, max_size=3))),
)
def test_oip_json(shape: list[int], datatype: str, data: list[object]) -> None:
    _accepts(from_oip, shape, datatype, data, RECORD, MAX_ITEMS)


@EXAMPLES
@given(shape=shapes, datatype=st.sampled_from(DATATYPES), raw=st.binary(max_size=4 * 784 * 2))
def test_oip_binary(shape: list[int], datatype: str, raw: bytes) -> None:
    _accepts(from_oip_binary, shape, datatype, raw, RECORD, MAX_ITEMS)
    if shape and 0 < shape[0] <= MAX_ITEMS and shape[1:] == [1, 28, 28] and datatype == "UINT8":
        exact = bytes(shape[0] * 784)
        _accepts(from_oip_binary, shape, datatype, exact, RECORD, MAX_ITEMS)


# ------------------------------------------------------------------ over HTTP
@pytest.mark.redis
@settings(max_examples=150, deadline=None, suppress_health_check=list(HealthCheck))
@given(
    shape=shapes,
    datatype=st.sampled_from(DATATYPES),
    data=st.lists(numbers, max_size=6),
    binary=st.one_of(st.none(), st.binary(max_size=64)),
    npy=npy_files(),
)
def test_no_server_error_over_http(  # type: ignore[no-untyped-def]
    fuzz_server, shape, datatype, data, binary, npy
) -> None:
    c: httpx.Client = fuzz_server.client
    tensor: dict[str, object] = {"name": "input", "shape": shape, "datatype": datatype}
    if binary is None:
        # encoded here, not by httpx (which refuses non-finite floats): a client can send
        # the non-standard tokens NaN and Infinity, and the server must answer them
        body = json.dumps({"inputs": [{**tensor, "data": data}]})
        r = c.post(
            "/v2/models/fuzz/infer",
            content=body,
            headers={"Content-Type": "application/json"},
        )
    else:
        head = json.dumps(
            {"inputs": [{**tensor, "parameters": {"binary_data_size": len(binary)}}]}
        ).encode()
        r = c.post(
            "/v2/models/fuzz/infer",
            content=head + binary,
            headers={"Inference-Header-Content-Length": str(len(head))},
        )
    assert r.status_code < 500, r.text
    r = c.post("/predict", json={"model": "fuzz", "inputs": base64.b64encode(npy).decode()})
    assert r.status_code < 500, r.text


@pytest.fixture(scope="module")
def fuzz_server(start_server, redis_store: str):  # type: ignore[no-untyped-def]
    server = start_server(store_url=redis_store, api_key=API_KEY)
    assert upload(server, "fuzz", _BUNDLE).status_code == 201
    yield server
    assert "Traceback" not in server.log()
