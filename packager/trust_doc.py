"""Writing trust policy updates on the workstation: a new policy (``edgeship trust new``) and its
signatures (``edgeship trust sign``).

The update format and the device's decision live in :mod:`runtime.rotation`; this module only
gathers keys from files and writes. Signatures can be collected in several passes (each key
holder signs the same file in turn), because signing an update adds to the signatures it has.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional, Sequence

from packager.keys import load_private_key
from runtime import tomlio
from runtime.errors import TrustPolicyError, UsageError
from runtime.fsutil import atomic_write
from runtime.limits import DEFAULT_TRUST_UPDATE_LIMITS
from runtime.rotation import TrustUpdate
from runtime.signing import load_public_key
from runtime.trust import MAX_POLICY_BYTES, TrustPolicy

FIRST_UPDATE_VERSION = 2
"""The version of the first update after ``edgeship-device init`` (which writes version 1)."""


def new_policy(
    public_keys: Sequence[Path],
    threshold: int,
    revoke: Sequence[str] = (),
    *,
    version: Optional[int] = None,
    min_sequence: Optional[int] = None,
    previous: Optional[Path] = None,
) -> TrustPolicy:
    """The policy a device should move to next.

    With ``previous`` (a ``trust.toml`` or an update file holding the policy devices have now),
    the version defaults to the previous one plus one, its revoked key ids stay revoked and its
    minimum sequence is kept unless ``min_sequence`` is given. Without it, the version defaults
    to 2. Raises TrustPolicyError for an impossible policy, KeyError_ for an unreadable key.
    """
    before = read_policy(previous) if previous is not None else None
    if version is None:
        version = before.version + 1 if before else FIRST_UPDATE_VERSION
    elif before is not None and version != before.version + 1:
        raise UsageError(
            f"--version {version}: devices at version {before.version} accept only "
            f"{before.version + 1} next"
        )
    if min_sequence is None:
        min_sequence = before.min_sequence if before else 0
    keys = [(load_public_key(_read(p, MAX_POLICY_BYTES), str(p)), p.stem) for p in public_keys]
    revoked = frozenset(revoke) | (before.revoked if before else frozenset())
    return TrustPolicy.create(keys, threshold).with_changes(
        revoked=revoked, min_sequence=min_sequence, version=version
    )


def write_policy(policy: TrustPolicy, out: Path) -> None:
    """Write ``policy`` as a ``trust.toml`` document (the input of :func:`sign_file`)."""
    header = (
        f"# edgeship trust policy, version {policy.version}: sign it with "
        "'edgeship trust sign' (current and new keys).\n"
    )
    atomic_write(out, (header + tomlio.dumps(policy.to_dict())).encode("utf-8"))


def read_source(path: Path) -> TrustUpdate:
    """Read a policy (TOML) or an update file (JSON, its signatures kept) to sign.

    Raises UsageError if the file is missing, TrustPolicyError or TrustUpdateError if malformed.
    """
    data = _read(path, DEFAULT_TRUST_UPDATE_LIMITS.max_document_bytes)
    if data.lstrip()[:1] == b"{":
        return TrustUpdate.from_bytes(data)
    try:
        doc = tomlio.loads(data.decode("utf-8"))
    except (UnicodeDecodeError, tomlio.TOMLDecodeError) as e:
        raise TrustPolicyError(f"{path}: neither an update (JSON) nor a policy (TOML): {e}") from e
    return TrustUpdate.unsigned(TrustPolicy.from_dict(doc))


def read_policy(path: Path) -> TrustPolicy:
    """The policy in a ``trust.toml`` or in an update file."""
    return read_source(path).policy


@dataclass(frozen=True)
class SignedUpdate:
    out: Path
    update: TrustUpdate

    def to_dict(self) -> dict[str, Any]:
        policy = self.update.policy
        usable = {k.keyid for k in policy.keys} - policy.revoked
        signers = sorted({s.keyid for s in self.update.signatures})
        return {
            "out": str(self.out),
            "version": policy.version,
            "threshold": policy.threshold,
            "signers": signers,
            "new_keys_signed": len(usable & set(signers)),
        }


def sign_file(source: Path, key_paths: Sequence[Path], out: Path) -> SignedUpdate:
    """Sign the policy or update in ``source`` with every key and write the update to ``out``.

    Only the new policy's side of the approval can be checked here; whether the current keys
    signed enough is the device's decision. Raises KeyError_ for an unreadable key.
    """
    if not key_paths:
        raise UsageError("give at least one --key")
    update = read_source(source).signed_by(load_private_key(p) for p in key_paths)
    limit = DEFAULT_TRUST_UPDATE_LIMITS.max_signatures
    if len(update.signatures) > limit:
        raise UsageError(f"an update holds at most {limit} signatures")
    atomic_write(out, update.to_bytes())
    return SignedUpdate(out, update)


def _read(path: Path, limit: int) -> bytes:
    try:
        with path.open("rb") as f:
            data = f.read(limit + 1)
    except OSError as e:
        raise UsageError(f"cannot read {path}: {e.strerror}") from e
    if len(data) > limit:
        raise UsageError(f"{path} is larger than {limit} bytes")
    return data
