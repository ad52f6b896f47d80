"""One exception tree for edgeship, split by what failed.

Every error edgeship raises on purpose derives from :class:`EdgeshipError`; each CLI maps the tree
to exit codes in one place (``EXIT_CODES``). Bundle errors name the verification step that failed.
"""

from __future__ import annotations


class EdgeshipError(Exception):
    """Base of every error edgeship raises on purpose."""

    exit_code = 1


class UsageError(EdgeshipError):
    """The caller asked for something that cannot be done as asked (bad option, missing file)."""

    exit_code = 2


# --- bundles and trust -------------------------------------------------------------------------


class BundleError(EdgeshipError):
    """A bundle failed verification. ``step`` names the verification step."""

    step = "bundle"
    exit_code = 1


class BundleSizeError(BundleError):
    step = "size-limits"


class BundleFormatError(BundleError):
    """The file is not a well-formed bundle archive (not a tar, truncated, bad member order)."""

    step = "archive"


class ManifestError(BundleError):
    """The manifest is not JSON, has wrong types, or an unknown format version."""

    step = "manifest"


class SignatureError(BundleError):
    """The signatures do not satisfy the trust policy (untrusted, revoked, below threshold)."""

    step = "signatures"


class ExpiredError(BundleError):
    step = "expiry"


class TargetMismatchError(BundleError):
    step = "target"


class RollbackError(BundleError):
    """The bundle's sequence is below the device's anti-rollback floor."""

    step = "sequence"


class PayloadError(BundleError):
    """A payload member is missing, extra, duplicated, unsafe, or does not match its digest."""

    step = "payload"


class TrustPolicyError(EdgeshipError):
    """The device's trust policy file is missing or malformed."""

    exit_code = 3


class KeyError_(EdgeshipError):  # noqa: N801 - avoid shadowing the builtin KeyError
    """A key file cannot be read (wrong format, wrong passphrase)."""

    exit_code = 3


# --- models -------------------------------------------------------------------------------------


class ModelError(EdgeshipError):
    """A model cannot be converted, loaded or run."""

    exit_code = 4


class ConversionError(ModelError):
    """The source model cannot be converted to the bundle's format."""


class ParityError(ModelError):
    """The packaged model disagrees with the original beyond tolerance."""

    exit_code = 1


class SelfTestError(ModelError):
    """The on-device self-test failed: the model was not activated."""

    exit_code = 1


class BackendUnavailableError(ModelError):
    """No installed inference backend can run this model."""


# --- inputs -------------------------------------------------------------------------------------


class InputError(EdgeshipError):
    """A prediction request does not fit the model's input signature."""

    exit_code = 5


# --- store --------------------------------------------------------------------------------------


class StoreError(EdgeshipError):
    """The device store is missing, inconsistent, or the requested model/slot does not exist."""

    exit_code = 6


# --- transport ----------------------------------------------------------------------------------


class TransportError(EdgeshipError):
    """A network or file transfer failed."""

    exit_code = 7


EXIT_CODES = {
    0: "success",
    1: "verification or validation failure (bundle rejected, parity/self-test failed)",
    2: "usage error (bad option, missing file)",
    3: "key or trust policy problem",
    4: "model cannot be converted, loaded or run",
    5: "input does not fit the model",
    6: "device store problem (unknown model, nothing to roll back to)",
    7: "transport failure",
}
