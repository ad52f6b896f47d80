"""The device's trust policy (``trust.toml``): which keys it trusts, how many must sign, which
key ids are revoked, the lowest sequence it accepts, and the policy's own version (raised by one
with every signed update, ``runtime.rotation``).

``TrustPolicy`` is a value; ``check_signatures`` is the trust decision the verifier makes with it.
"""

from __future__ import annotations

import base64
import binascii
import re
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Iterable, Mapping

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from runtime import tomlio
from runtime.errors import SignatureError, TrustPolicyError
from runtime.fsutil import atomic_write
from runtime.signing import (
    Envelope,
    key_id,
    public_key_from_raw,
    raw_public_bytes,
    valid_signers,
)

MAX_POLICY_BYTES = 256 * 1024
KEYID_RE = re.compile(r"^[0-9a-f]{64}$")
POLICY_VERSION = 1
"""The version of a policy that never went through an update (and of files without one)."""


@dataclass(frozen=True)
class TrustedKey:
    keyid: str
    key: Ed25519PublicKey
    name: str = ""


@dataclass(frozen=True)
class TrustPolicy:
    keys: tuple[TrustedKey, ...]
    threshold: int = 1
    revoked: frozenset[str] = field(default_factory=frozenset)
    min_sequence: int = 0
    version: int = POLICY_VERSION

    def __post_init__(self) -> None:
        if self.version < 1:
            raise TrustPolicyError("version must be at least 1")
        if self.threshold < 1:
            raise TrustPolicyError("threshold must be at least 1")
        usable = {k.keyid for k in self.keys} - self.revoked
        if self.threshold > len(usable):
            raise TrustPolicyError(
                f"threshold {self.threshold} is more than the {len(usable)} trusted, "
                "non-revoked key(s): no bundle could ever be installed"
            )
        if len({k.keyid for k in self.keys}) != len(self.keys):
            raise TrustPolicyError("a key is listed twice")
        bad = [r for r in self.revoked if not KEYID_RE.match(r)]
        if bad:
            raise TrustPolicyError(f"revoked key id {bad[0]!r} is not 64 lowercase hex digits")
        if self.min_sequence < 0:
            raise TrustPolicyError("min_sequence must not be negative")

    @classmethod
    def create(
        cls, keys: Iterable[tuple[Ed25519PublicKey, str]], threshold: int = 1
    ) -> TrustPolicy:
        unique: dict[str, TrustedKey] = {}
        for key, name in keys:
            unique.setdefault(key_id(key), TrustedKey(key_id(key), key, name))
        return cls(tuple(unique.values()), threshold)

    def with_changes(self, **changes: Any) -> TrustPolicy:
        return replace(self, **changes)

    def check_signatures(self, manifest_bytes: bytes, envelope: Envelope) -> frozenset[str]:
        """Return the key ids whose valid signatures meet the threshold; raise SignatureError.

        Revoked keys never count, even when their signature is valid.
        """
        keys = {k.keyid: k.key for k in self.keys}
        good, unknown, bad = valid_signers(manifest_bytes, envelope, keys)
        counted = good - self.revoked
        if len(counted) >= self.threshold:
            return frozenset(counted)
        reasons = []
        if good & self.revoked:
            reasons.append(f"revoked key(s) {_short(good & self.revoked)}")
        if bad:
            reasons.append(f"signature by {_short(bad)} does not match the manifest")
        if unknown:
            reasons.append(f"untrusted key(s) {_short(unknown)}")
        detail = "; ".join(reasons) or "no valid signature"
        raise SignatureError(
            f"{len(counted)} valid signature(s) from trusted keys, {self.threshold} required: "
            f"{detail}"
        )

    # --- the trust.toml document --------------------------------------------------------------

    def to_dict(self) -> dict[str, Any]:
        return {
            "version": self.version,
            "threshold": self.threshold,
            "min_sequence": self.min_sequence,
            "revoked": sorted(self.revoked),
            "keys": [
                {
                    "id": k.keyid,
                    "name": k.name,
                    "ed25519": base64.b64encode(raw_public_bytes(k.key)).decode("ascii"),
                }
                for k in self.keys
            ],
        }

    @classmethod
    def from_dict(cls, doc: Mapping[str, Any]) -> TrustPolicy:
        version = doc.get("version", POLICY_VERSION)
        if isinstance(version, bool) or not isinstance(version, int) or version < 1:
            raise TrustPolicyError("trust policy: version must be an integer of at least 1")
        keys = []
        for i, entry in enumerate(_list(doc, "keys")):
            if not isinstance(entry, dict) or not isinstance(entry.get("ed25519"), str):
                raise TrustPolicyError(f"trust policy: keys[{i}] needs an ed25519 value")
            try:
                key = public_key_from_raw(base64.b64decode(entry["ed25519"], validate=True))
            except (binascii.Error, ValueError) as e:
                raise TrustPolicyError(f"trust policy: keys[{i}] is not base64") from e
            if entry.get("id") not in (None, key_id(key)):
                raise TrustPolicyError(f"trust policy: keys[{i}].id does not match its key")
            keys.append(TrustedKey(key_id(key), key, str(entry.get("name", ""))))
        revoked = _list(doc, "revoked")
        if not all(isinstance(r, str) for r in revoked):
            raise TrustPolicyError("trust policy: revoked must be a list of key ids")
        threshold, min_sequence = doc.get("threshold", 1), doc.get("min_sequence", 0)
        if any(isinstance(v, bool) or not isinstance(v, int) for v in (threshold, min_sequence)):
            raise TrustPolicyError("trust policy: threshold and min_sequence must be integers")
        return cls(tuple(keys), threshold, frozenset(revoked), min_sequence, version)

    @classmethod
    def load(cls, path: Path) -> TrustPolicy:
        """Read ``trust.toml``; raises TrustPolicyError when missing, too big or malformed."""
        try:
            with path.open("rb") as f:
                data = f.read(MAX_POLICY_BYTES + 1)
        except FileNotFoundError as e:
            raise TrustPolicyError(
                f"no trust policy at {path}: run 'edgeship-device init --trust KEY.pub' first"
            ) from e
        if len(data) > MAX_POLICY_BYTES:
            raise TrustPolicyError(f"{path}: larger than {MAX_POLICY_BYTES} bytes")
        try:
            doc = tomlio.loads(data.decode("utf-8"))
        except (UnicodeDecodeError, tomlio.TOMLDecodeError) as e:
            raise TrustPolicyError(f"{path}: not valid TOML: {e}") from e
        return cls.from_dict(doc)

    def save(self, path: Path) -> None:
        header = "# edgeship trust policy: keys this device trusts to sign bundles.\n"
        atomic_write(path, (header + tomlio.dumps(self.to_dict())).encode("utf-8"))


def _list(doc: Mapping[str, Any], key: str) -> list[Any]:
    value = doc.get(key, [])
    if not isinstance(value, list):
        raise TrustPolicyError(f"trust policy: {key} must be a list")
    return value


def _short(ids: Iterable[str]) -> str:
    return ", ".join(sorted(i[:12] for i in ids))
