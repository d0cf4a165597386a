"""Hostile bundles: the committed attack files, a header at the size cap, and a
fuzz loop. Each malformed input is rejected with its own code, within bounded
memory (``tracemalloc`` sees Python and numpy allocations) and time, and the
spec reader (written from docs/bundle-format.md) agrees on the outcome."""

from __future__ import annotations

import json
import random
import struct
import time
import tracemalloc
from pathlib import Path
from typing import Any

import pytest

from pemn.bundle import BundleError, BundleLimits, read_bundle
from pemn.bundle.spec import arch_layout
from pemn.prototype import Strategy
from pemn.testing import make_bundle
from tests.pemn.bundle import spec_reader
from tests.pemn.bundle.attacks.make_attacks import build
from tests.pemn.bundle.craft import tiny, tiny_manifest, tiny_manifest_2, tiny_tensors_2

ATTACKS = Path(__file__).resolve().parent / "attacks"
EXPECTED: dict[str, dict[str, Any]] = json.loads((ATTACKS / "expected.json").read_text())

MIB = 2**20
# Allocation bound: parsed JSON takes up to ~30x its text in Python objects (a
# header is at most 1 MiB), plus a fixed allowance. A declared size that slipped
# through would cost gigabytes. Checking a config at the repeat cap builds its
# module tree on the meta device: ~10 KB of Python objects per module (2,050
# layers for ConvMixer depth 1024), no tensor data; it also takes seconds.
ALLOCATION_PER_BYTE = 32
ARCH_AT_REPEAT_CAP = {"config-huge-depth.pemn": 40 * MIB}


@pytest.fixture(scope="module", autouse=True)
def _warm() -> None:
    """Lazy imports and first-call caches of torch's meta kernels are one-time
    costs of the process, not of a bundle: pay them before measuring."""
    for arch in ("mlp", "convmixer", "vit", "resnet20"):
        arch_layout(arch, {})
    read_bundle(tiny())
    spec_reader.read(tiny())


def _peak(fn: Any) -> tuple[Any, int, float]:
    tracemalloc.start()
    t = time.perf_counter()
    try:
        return fn(), 0, 0.0
    except BundleError as exc:
        return exc, tracemalloc.get_traced_memory()[1], time.perf_counter() - t
    finally:
        tracemalloc.stop()


def test_attack_files_are_what_the_script_makes() -> None:
    made = build()
    on_disk = sorted(p.name for p in ATTACKS.glob("*.pemn"))
    assert on_disk == sorted(made), "run python -m tests.pemn.bundle.attacks.make_attacks"
    for name, (data, entry) in made.items():
        assert (ATTACKS / name).read_bytes() == data, name
        assert EXPECTED[name] == entry, name
    assert len(EXPECTED) == len(made)


def test_attacks_cover_every_error_code() -> None:
    from pemn.bundle import errors as E

    codes = {
        cls.code
        for cls in vars(E).values()
        if isinstance(cls, type) and issubclass(cls, E.BundleError) and cls is not E.BundleError
    }
    assert {e["code"] for e in EXPECTED.values()} == codes


@pytest.mark.parametrize(
    "name",
    [
        pytest.param(n, marks=pytest.mark.slow) if n in ARCH_AT_REPEAT_CAP else n
        for n in sorted(EXPECTED)
    ],
)
def test_attack_is_rejected_with_its_code_in_bounded_memory(name: str) -> None:
    data = (ATTACKS / name).read_bytes()
    entry = EXPECTED[name]
    limits = BundleLimits(**entry.get("limits", {}))
    exc, peak, elapsed = _peak(lambda: read_bundle(data, limits=limits))
    assert isinstance(exc, BundleError), f"{name} was accepted"
    assert exc.code == entry["code"], f"{name}: {exc.code} {exc}"
    assert "\n" not in str(exc) and len(str(exc)) <= 400
    allowance = ARCH_AT_REPEAT_CAP.get(name, 2 * MIB)
    bound = ALLOCATION_PER_BYTE * len(data) + allowance
    assert peak <= bound, f"{name}: peak {peak} bytes for a {len(data)}-byte file"
    assert elapsed < 60, f"{name}: {elapsed:.1f} s"
    with pytest.raises(spec_reader.SpecError) as spec:
        spec_reader.read(data, entry.get("limits"))
    assert spec.value.code == entry["code"]


def test_header_at_the_size_cap_is_parsed_in_bounded_memory() -> None:
    """A manifest of nearly 1 MiB (80,000 labels) for a 2-class model."""
    labels = [f"l{i:06d}" for i in range(80_000)]
    data = tiny(tiny_manifest(labels=labels))
    (n,) = struct.unpack_from("<Q", data)
    assert 0.9 * MIB < n <= MIB
    exc, peak, _ = _peak(lambda: read_bundle(data))
    assert isinstance(exc, BundleError) and exc.code == "bundle.manifest_invalid"
    assert "labels" in str(exc)
    assert peak <= ALLOCATION_PER_BYTE * len(data) + 2 * MIB, peak


def _mutate(rng: random.Random, data: bytes) -> bytes:
    b = bytearray(data)
    (n,) = struct.unpack_from("<Q", data)
    kind = rng.choice(
        ["flip", "flip", "header", "header", "byte", "truncate", "insert", "delete", "length"]
    )
    if kind == "flip":
        for _ in range(rng.randint(1, 4)):
            i = rng.randrange(len(b))
            b[i] ^= 1 << rng.randrange(8)
    elif kind == "header":  # most of the structure is in the header: aim there
        for _ in range(rng.randint(1, 3)):
            i = rng.randrange(8, 8 + n)
            b[i] = (
                rng.choice(b'0123456789{}[]":,.-eE \\"tfn')
                if rng.random() < 0.5
                else rng.randrange(256)
            )
    elif kind == "byte":
        b[rng.randrange(len(b))] = rng.randrange(256)
    elif kind == "truncate":
        del b[rng.randrange(len(b)) :]
    elif kind == "insert":
        i = rng.randrange(len(b))
        b[i:i] = bytes(rng.randrange(256) for _ in range(rng.randint(1, 8)))
    elif kind == "delete":
        i = rng.randrange(len(b))
        del b[i : i + rng.randint(1, 8)]
    else:
        b[:8] = struct.pack("<Q", max(0, n + rng.randint(-16, 16)))
    return bytes(b)


def _outcome(fn: Any) -> str:
    try:
        fn()
    except (BundleError, spec_reader.SpecError) as exc:
        return exc.code  # type: ignore[no-any-return]
    return "valid"


def test_fuzz_reader_returns_or_raises_bundle_error() -> None:
    """Random flips, overwrites, truncations, insertions and deletions of valid
    bundles: the reader returns a bundle or raises ``BundleError`` (anything else
    fails the test), quickly, and the spec reader reaches the same verdict."""
    bases = [
        tiny(),
        tiny(tiny_manifest_2(), tiny_tensors_2()),
        make_bundle(),
        make_bundle(format_version="1.0"),
        make_bundle(state_dtype="bfloat16"),
        make_bundle(
            "vit",
            {"in_channels": 1, "image_size": 8, "width": 8, "depth": 1, "heads": 2, "patch": 4},
            Strategy("mp", seed=3),
            embed_prototype=True,
        ),
    ]
    rng = random.Random(20240601)
    seen: dict[str, int] = {}
    for i in range(400):
        data = _mutate(rng, bases[i % len(bases)])
        t = time.perf_counter()
        ours = _outcome(lambda: read_bundle(data))  # noqa: B023 (called at once)
        assert time.perf_counter() - t < 10, f"iteration {i} took too long"
        theirs = _outcome(lambda: spec_reader.read(data))  # noqa: B023
        assert ours == theirs, f"iteration {i}: reader {ours}, spec reader {theirs}"
        seen[ours] = seen.get(ours, 0) + 1
    assert len(seen) >= 8, seen  # the mutations reach many different checks
