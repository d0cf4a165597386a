"""The bundle: a safetensors file holding one task's bit-packed masks, its folded
norm tensors and a JSON manifest (see docs/bundle-format.md).

    data = write_bundle(arch=..., config=..., strategy=..., density=0.5, masks=...,
                        trained=..., input_spec=InputSpec(...), labels=[...])
    bundle = read_bundle(data)          # validates everything or raises BundleError
    summary = inspect_bundle(data)      # JSON-able summary
    old = convert_bundle(data, format_version="1.0")   # for readers of format 1 only
"""

from pemn.bundle.errors import *  # noqa: F403  (the error family)
from pemn.bundle.errors import BundleError
from pemn.bundle.errors import __all__ as _errors
from pemn.bundle.reader import Bundle, inspect_bundle, read_bundle, verify_prototype
from pemn.bundle.spec import FORMAT, FORMAT_VERSION, BundleLimits, InputSpec, Manifest, fingerprint
from pemn.bundle.writer import convert_bundle, write_bundle

__all__ = [
    *_errors,
    "FORMAT",
    "FORMAT_VERSION",
    "Bundle",
    "BundleError",
    "BundleLimits",
    "InputSpec",
    "Manifest",
    "convert_bundle",
    "fingerprint",
    "inspect_bundle",
    "read_bundle",
    "verify_prototype",
    "write_bundle",
]
