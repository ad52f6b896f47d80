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


class NotYetValidError(BundleError):
    """The bundle was made later than the device's clock allows: the device clock is behind."""

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


class TrustUpdateError(TrustPolicyError):
    """A signed trust policy update was refused (malformed, oversized, not signed by enough of
    the current and the new keys, or not the next version); the device's policy is unchanged."""

    exit_code = 1


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
    """A prediction request does not fit the model's input signature.

    ``reason`` is a short fixed word for counting rejections (telemetry, status): ``format``,
    ``size``, ``names``, ``dtype``, ``shape``, ``batch``, ``non-finite``, ``range``.
    """

    exit_code = 5

    def __init__(self, message: str, reason: str = "format") -> None:
        super().__init__(message)
        self.reason = reason


# --- store --------------------------------------------------------------------------------------


class StoreError(EdgeshipError):
    """The device store is missing, inconsistent, or the requested model/slot does not exist."""

    exit_code = 6


# --- transport ----------------------------------------------------------------------------------


class TransportError(EdgeshipError):
    """A network or file transfer failed."""

    exit_code = 7


class ApiError(TransportError):
    """The local inference API refused a request before any model saw it (unknown route, wrong
    method, body too large or too slow, server busy). ``status`` is the HTTP status it is answered
    with; on the client side (``edgeship-device feedback``) it carries the agent's answer, and the
    exit code follows what failed: 5 a bad request (400), 6 an unknown model (404), 4 the model
    (500), 7 anything else."""

    def __init__(self, message: str, status: int) -> None:
        super().__init__(message)
        self.status = status
        self.exit_code = {400: 5, 404: 6, 500: 4}.get(status, TransportError.exit_code)


class TelemetryMessageError(TransportError):
    """A telemetry message is malformed, oversized, of an unknown version, or on a wrong topic."""


# --- fleet side ---------------------------------------------------------------------------------


class FleetStoreError(EdgeshipError):
    """The fleet database cannot be opened, read or written (bad URL, server down, schema)."""

    exit_code = 8


class AlertRulesError(UsageError):
    """An alert rules file is too large, not TOML, or has an unknown or badly typed field."""


class RemoteInstallError(EdgeshipError):
    """A device refused a pushed bundle or could not install it (``edgeship push``).

    ``exit_code`` is the device command's own code (both programs share the table), so a bundle
    the device refused exits 1 here too; the message carries the device's one-line reason.
    """

    def __init__(self, message: str, exit_code: int = 1) -> None:
        super().__init__(message)
        self.exit_code = exit_code


EXIT_CODES = {
    0: "success",
    1: "verification or validation failure (bundle or trust update rejected, parity or self-test)",
    2: "usage error (bad option, missing file)",
    3: "key or trust policy problem",
    4: "model cannot be converted, loaded or run",
    5: "input does not fit the model",
    6: "device store problem (unknown model, nothing to roll back to)",
    7: "transport failure",
    8: "fleet database problem",
}
