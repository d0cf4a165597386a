"""The bundle error family: one class per kind of failure, each with a stable ``code``.

Every error is a ``ValueError`` whose message is one sentence naming the offending
field or tensor; ``field`` carries that name for programs (the service turns an
error into ``{"error": message, "code": code}`` with status 413 or 422).
"""

from __future__ import annotations

__all__ = [
    "ArchitectureMismatch",
    "BundleError",
    "BundleTooLarge",
    "DigestMismatch",
    "HeaderInvalid",
    "HeaderTooLarge",
    "InvalidOffsets",
    "ManifestInvalid",
    "ManifestNotJSON",
    "MissingTensor",
    "ModelTooLarge",
    "NonFiniteValue",
    "NonZeroPadding",
    "NotABundle",
    "PopcountMismatch",
    "TooManyTensors",
    "TrailingBytes",
    "Truncated",
    "UnexpectedTensor",
    "UnknownArchitecture",
    "UnsupportedVersion",
    "WrongDtype",
    "WrongShape",
]


class BundleError(ValueError):
    """Base of every bundle failure."""

    code = "bundle.invalid"

    def __init__(self, message: str, field: str | None = None) -> None:
        super().__init__(message)
        self.field = field


class BundleTooLarge(BundleError):
    """The file exceeds the maximum bundle size."""

    code = "bundle.too_large"


class Truncated(BundleError):
    """The file ends before the header or the data it declares."""

    code = "bundle.truncated"


class HeaderTooLarge(BundleError):
    """The declared JSON header length exceeds the header cap."""

    code = "bundle.header_too_large"


class HeaderInvalid(BundleError):
    """The safetensors header is not a JSON object of well-formed tensor entries."""

    code = "bundle.header_invalid"


class NotABundle(BundleError):
    """A valid safetensors file that is not a pemn bundle (metadata ``format`` missing or wrong)."""

    code = "bundle.not_a_bundle"


class ManifestNotJSON(BundleError):
    """The ``manifest`` metadata value is not a JSON object."""

    code = "bundle.manifest_not_json"


class UnsupportedVersion(BundleError):
    """The manifest's ``format_version`` has a major version this reader does not know."""

    code = "bundle.unsupported_version"


class ManifestInvalid(BundleError):
    """A manifest field is missing, of the wrong type or out of range."""

    code = "bundle.manifest_invalid"


class UnknownArchitecture(BundleError):
    """The manifest names an architecture this reader does not have."""

    code = "bundle.unknown_arch"


class ArchitectureMismatch(BundleError):
    """The manifest's layer or trained-tensor list differs from the declared architecture's."""

    code = "bundle.arch_mismatch"


class ModelTooLarge(BundleError):
    """The declared architecture has more layers or weights than the reader's caps allow."""

    code = "bundle.model_too_large"


class TooManyTensors(BundleError):
    """The header declares more tensors than the cap allows."""

    code = "bundle.too_many_tensors"


class WrongDtype(BundleError):
    """A tensor has a dtype other than the one the format prescribes for it."""

    code = "bundle.wrong_dtype"


class WrongShape(BundleError):
    """A tensor's shape differs from what the declared architecture requires."""

    code = "bundle.wrong_shape"


class InvalidOffsets(BundleError):
    """Tensor data offsets are out of range, overlap, leave holes or disagree with the shape."""

    code = "bundle.invalid_offsets"


class TrailingBytes(BundleError):
    """Bytes follow the last tensor's data."""

    code = "bundle.trailing_bytes"


class MissingTensor(BundleError):
    """A tensor the format requires is absent."""

    code = "bundle.missing_tensor"


class UnexpectedTensor(BundleError):
    """A tensor the format does not define is present."""

    code = "bundle.unexpected_tensor"


class PopcountMismatch(BundleError):
    """A layer's mask keeps a different number of weights than the declared density implies."""

    code = "bundle.popcount_mismatch"


class NonZeroPadding(BundleError):
    """Unused bits after a layer's mask are not zero."""

    code = "bundle.nonzero_padding"


class NonFiniteValue(BundleError):
    """A trained tensor holds NaN or infinity (or a non-positive variance-like value)."""

    code = "bundle.non_finite"


class DigestMismatch(BundleError):
    """The regenerated (or embedded) prototype's digest differs from the manifest's."""

    code = "bundle.digest_mismatch"
