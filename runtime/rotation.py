"""Signed trust policy updates: rotating and revoking signing keys in the style of TUF's root
rotation (docs/keys.md, docs/adr/0007-trust-rotation.md).

An update is one JSON file, a DSSE envelope around the new policy::

    {"format": "edgeship.trust-update/v1",
     "payloadType": "application/vnd.edgeship.trust+json",
     "payload": "<base64 of the new policy as canonical JSON>",
     "signatures": [{"keyid": "<64 hex>", "sig": "<base64>"}, ...]}

A device at policy version N accepts it only when, in this order:

1. the file is at most ``TrustUpdateLimits.max_document_bytes`` and parses strictly (known fields
   only, canonical payload bytes, no repeated keys);
2. the signatures of a threshold of the *current* policy's non-revoked keys are valid;
3. the new policy's version is exactly N + 1 (a replayed, older or skipping update is refused;
   a chain of updates is applied one after another);
4. the signatures of a threshold of the *new* policy's non-revoked keys are valid: the holders of
   the new keys approve the rotation as well.

:func:`check_update` is that decision, pure. :func:`apply_updates` is the I/O around it: read the
files, decide under the store lock, replace ``trust.toml`` atomically. The packager writes updates
with :meth:`TrustUpdate.signed_by`: one implementation of the format serves both sides.
"""

from __future__ import annotations

import base64
import binascii
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Sequence

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from runtime.canonical import canonical_bytes, strict_loads
from runtime.errors import KeyError_, TrustPolicyError, TrustUpdateError, UsageError
from runtime.limits import DEFAULT_TRUST_UPDATE_LIMITS, TrustUpdateLimits
from runtime.signing import Envelope, Signature, sign, valid_signers
from runtime.store import Store
from runtime.trust import KEYID_RE, TrustPolicy

TRUST_PAYLOAD_TYPE = "application/vnd.edgeship.trust+json"
UPDATE_FORMAT = "edgeship.trust-update/v1"
_ENVELOPE_FIELDS = frozenset({"format", "payloadType", "payload", "signatures"})
_POLICY_FIELDS = frozenset({"version", "threshold", "min_sequence", "revoked", "keys"})
_KEY_FIELDS = frozenset({"id", "name", "ed25519"})
_SIGNATURE_BYTES = 64


def policy_bytes(policy: TrustPolicy) -> bytes:
    """The bytes an update signs: the policy's document as canonical JSON."""
    return canonical_bytes(policy.to_dict())


@dataclass(frozen=True)
class TrustUpdate:
    """A new trust policy with the signatures collected for it so far."""

    policy: TrustPolicy
    body: bytes
    signatures: tuple[Signature, ...] = ()

    @classmethod
    def unsigned(cls, policy: TrustPolicy) -> TrustUpdate:
        return cls(policy, policy_bytes(policy))

    def signed_by(self, keys: Iterable[Ed25519PrivateKey]) -> TrustUpdate:
        """A copy with one signature per key added; a key that already signed signs afresh."""
        by_key = {s.keyid: s for s in self.signatures}
        for key in keys:
            signature = sign(self.body, key, TRUST_PAYLOAD_TYPE)
            by_key[signature.keyid] = signature
        return TrustUpdate(self.policy, self.body, tuple(by_key.values()))

    def to_bytes(self) -> bytes:
        doc = {
            "format": UPDATE_FORMAT,
            "payloadType": TRUST_PAYLOAD_TYPE,
            "payload": base64.b64encode(self.body).decode("ascii"),
            "signatures": [s.to_dict() for s in self.signatures],
        }
        return (json.dumps(doc, indent=2, sort_keys=True) + "\n").encode("utf-8")

    @classmethod
    def from_bytes(
        cls, data: bytes, limits: TrustUpdateLimits = DEFAULT_TRUST_UPDATE_LIMITS
    ) -> TrustUpdate:
        """Parse an update strictly; raises TrustUpdateError. No signature is checked here."""
        if len(data) > limits.max_document_bytes:
            raise TrustUpdateError(f"update larger than {limits.max_document_bytes} bytes")
        doc = _strict_json(data, "update")
        if not isinstance(doc, dict) or set(doc) != _ENVELOPE_FIELDS:
            raise TrustUpdateError(
                f"update: expected exactly the fields {sorted(_ENVELOPE_FIELDS)}"
            )
        if doc["format"] != UPDATE_FORMAT:
            raise TrustUpdateError(f"update: format must be {UPDATE_FORMAT!r}")
        if doc["payloadType"] != TRUST_PAYLOAD_TYPE:
            raise TrustUpdateError(f"update: payloadType must be {TRUST_PAYLOAD_TYPE!r}")
        body = _b64(doc["payload"], "update: payload")
        signatures = _signatures(doc["signatures"], limits)
        return cls(_policy(body, limits), body, signatures)


def check_update(current: TrustPolicy, update: TrustUpdate) -> TrustPolicy:
    """Decide whether a device holding ``current`` may adopt ``update``; return the new policy.

    Raises TrustUpdateError naming the first check that failed (see the module docstring).
    """
    _approved(current, update, "current")
    expected = current.version + 1
    got = update.policy.version
    if got <= current.version:
        raise TrustUpdateError(
            f"update is version {got}, not newer than this device's policy (version "
            f"{current.version}): an old or replayed update"
        )
    if got != expected:
        raise TrustUpdateError(
            f"update is version {got}, but this device's policy is version {current.version}: "
            f"apply version {expected} first"
        )
    _approved(update.policy, update, "new")
    return update.policy


def _approved(policy: TrustPolicy, update: TrustUpdate, which: str) -> None:
    keys = {k.keyid: k.key for k in policy.keys}
    good, _, bad = valid_signers(update.body, Envelope(update.signatures), keys, TRUST_PAYLOAD_TYPE)
    counted = good - policy.revoked
    if len(counted) >= policy.threshold:
        return
    notes = []
    if good & policy.revoked:
        notes.append(f"{len(good & policy.revoked)} by revoked key(s)")
    if bad:
        notes.append(f"{len(bad)} that do not match")
    detail = f" ({'; '.join(notes)})" if notes else ""
    raise TrustUpdateError(
        f"update is signed by {len(counted)} of the {which} policy's keys, "
        f"{policy.threshold} required{detail}"
    )


# --- applying updates on a device ---------------------------------------------------------------


@dataclass(frozen=True)
class UpdateResult:
    previous_version: int
    policy: TrustPolicy
    applied: int

    def to_dict(self) -> dict[str, Any]:
        return {
            "previous_version": self.previous_version,
            "applied": self.applied,
            **self.policy.to_dict(),
        }


def read_update(path: Path, limits: TrustUpdateLimits = DEFAULT_TRUST_UPDATE_LIMITS) -> TrustUpdate:
    """Read and parse an update file; raises UsageError if it is missing, else TrustUpdateError."""
    try:
        with path.open("rb") as f:
            data = f.read(limits.max_document_bytes + 1)
    except FileNotFoundError as e:
        raise UsageError(f"no such update: {path}") from e
    except IsADirectoryError as e:
        raise UsageError(f"{path} is a folder, not an update") from e
    return TrustUpdate.from_bytes(data, limits)


def apply_updates(
    store: Store,
    paths: Sequence[Path],
    limits: TrustUpdateLimits = DEFAULT_TRUST_UPDATE_LIMITS,
) -> UpdateResult:
    """Apply the updates in ``paths`` in order and replace the device's trust policy once.

    All or nothing: if any update is refused, ``trust.toml`` is left as it was. Raises
    TrustUpdateError, UsageError (a missing file), or TrustPolicyError (store not initialized).
    """
    updates = [read_update(p, limits) for p in paths]
    if not updates:
        raise UsageError("no update given")
    with store.lock():
        policy = start = store.policy()
        for update in updates:
            policy = check_update(policy, update)
        store.save_policy(policy)
    return UpdateResult(start.version, policy, len(updates))


# --- strict parsing ------------------------------------------------------------------------------


def _strict_json(data: bytes, what: str) -> Any:
    try:
        return strict_loads(data)
    except (UnicodeDecodeError, ValueError, RecursionError) as e:
        raise TrustUpdateError(f"{what} is not JSON: {e}") from e


def _b64(value: Any, where: str) -> bytes:
    if not isinstance(value, str):
        raise TrustUpdateError(f"{where}: expected a base64 string")
    try:
        return base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError) as e:
        raise TrustUpdateError(f"{where}: not base64") from e


def _signatures(entries: Any, limits: TrustUpdateLimits) -> tuple[Signature, ...]:
    if not isinstance(entries, list) or not entries:
        raise TrustUpdateError("update: no signatures")
    if len(entries) > limits.max_signatures:
        raise TrustUpdateError(f"update: more than {limits.max_signatures} signatures")
    out = []
    for i, entry in enumerate(entries):
        where = f"update: signatures[{i}]"
        if not isinstance(entry, dict) or set(entry) != {"keyid", "sig"}:
            raise TrustUpdateError(f"{where}: expected exactly the fields keyid and sig")
        keyid = entry["keyid"]
        if not isinstance(keyid, str) or not KEYID_RE.match(keyid):
            raise TrustUpdateError(f"{where}.keyid: not 64 lowercase hex digits")
        sig = _b64(entry["sig"], f"{where}.sig")
        if len(sig) != _SIGNATURE_BYTES:
            raise TrustUpdateError(f"{where}.sig: not an Ed25519 signature")
        out.append(Signature(keyid, sig))
    return tuple(out)


def _policy(body: bytes, limits: TrustUpdateLimits) -> TrustPolicy:
    doc = _strict_json(body, "update: payload")
    if not isinstance(doc, dict) or set(doc) != _POLICY_FIELDS:
        raise TrustUpdateError(f"update: the policy must have exactly {sorted(_POLICY_FIELDS)}")
    if canonical_bytes(doc) != body:
        raise TrustUpdateError("update: the policy is not in canonical JSON form")
    keys = doc["keys"]
    if not isinstance(keys, list) or len(keys) > limits.max_keys:
        raise TrustUpdateError(f"update: keys must be a list of at most {limits.max_keys}")
    for i, entry in enumerate(keys):
        if not isinstance(entry, dict) or set(entry) != _KEY_FIELDS:
            raise TrustUpdateError(f"update: keys[{i}] must have exactly {sorted(_KEY_FIELDS)}")
        if not all(isinstance(entry[k], str) for k in _KEY_FIELDS):
            raise TrustUpdateError(f"update: keys[{i}]: every field must be a string")
    try:
        return TrustPolicy.from_dict(doc)
    except (TrustPolicyError, KeyError_) as e:
        raise TrustUpdateError(f"update: {e}") from e
