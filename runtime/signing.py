"""Ed25519 signatures over a manifest, in a DSSE-style envelope (docs/bundle-format.md §4).

The signed message is the DSSE pre-authentication encoding (PAE) of the manifest's exact bytes;
each signature carries the key id (SHA-256 of the raw 32-byte public key, lowercase hex). This
module holds the one implementation both the packager (signing) and the device (verifying) use.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
from dataclasses import dataclass
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from runtime.errors import KeyError_, SignatureError
from runtime.limits import DEFAULT_BUNDLE_LIMITS, BundleLimits

PAYLOAD_TYPE = "application/vnd.edgeship.manifest+json"
ENVELOPE_FORMAT = "edgeship.signatures/v1"


def pae(payload_type: str, body: bytes) -> bytes:
    """DSSE v1 pre-authentication encoding: ``DSSEv1 SP len(type) SP type SP len(body) SP body``."""
    kind = payload_type.encode("utf-8")
    return b"DSSEv1 %d %s %d %s" % (len(kind), kind, len(body), body)


def raw_public_bytes(key: Ed25519PublicKey) -> bytes:
    return key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)


def key_id(key: Ed25519PublicKey) -> str:
    """SHA-256 of the raw public key, lowercase hex: how every edgeship tool names a key."""
    return hashlib.sha256(raw_public_bytes(key)).hexdigest()


def public_key_from_raw(raw: bytes) -> Ed25519PublicKey:
    try:
        return Ed25519PublicKey.from_public_bytes(raw)
    except ValueError as e:
        raise KeyError_(f"not an Ed25519 public key: {e}") from e


def load_public_key(data: bytes, source: str = "public key") -> Ed25519PublicKey:
    """Read a public key from PEM (SubjectPublicKeyInfo) bytes; raises KeyError_."""
    try:
        key = serialization.load_pem_public_key(data)
    except (ValueError, TypeError) as e:
        raise KeyError_(f"{source}: not a PEM public key ({e})") from e
    if not isinstance(key, Ed25519PublicKey):
        raise KeyError_(f"{source}: not an Ed25519 key")
    return key


def public_key_pem(key: Ed25519PublicKey) -> bytes:
    return key.public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )


@dataclass(frozen=True)
class Signature:
    keyid: str
    sig: bytes

    def to_dict(self) -> dict[str, str]:
        return {"keyid": self.keyid, "sig": base64.b64encode(self.sig).decode("ascii")}


@dataclass(frozen=True)
class Envelope:
    """The ``signatures.json`` member: which keys signed the manifest bytes."""

    signatures: tuple[Signature, ...]

    def to_bytes(self) -> bytes:
        doc = {
            "format": ENVELOPE_FORMAT,
            "payloadType": PAYLOAD_TYPE,
            "signatures": [s.to_dict() for s in self.signatures],
        }
        return json.dumps(doc, sort_keys=True, separators=(",", ":")).encode("utf-8")

    @classmethod
    def from_bytes(cls, data: bytes, limits: BundleLimits = DEFAULT_BUNDLE_LIMITS) -> Envelope:
        """Parse an envelope; raises SignatureError when it is malformed."""
        try:
            doc: Any = json.loads(data.decode("utf-8"))
        except (UnicodeDecodeError, ValueError) as e:
            raise SignatureError(f"signatures.json is not JSON: {e}") from e
        if not isinstance(doc, dict) or doc.get("format") != ENVELOPE_FORMAT:
            raise SignatureError(f"signatures.json: format must be {ENVELOPE_FORMAT!r}")
        if doc.get("payloadType") != PAYLOAD_TYPE:
            raise SignatureError(f"signatures.json: payloadType must be {PAYLOAD_TYPE!r}")
        entries = doc.get("signatures")
        if not isinstance(entries, list) or not entries:
            raise SignatureError("signatures.json: no signatures")
        if len(entries) > limits.max_signatures:
            raise SignatureError(f"signatures.json: more than {limits.max_signatures} signatures")
        out = []
        for i, entry in enumerate(entries):
            if not isinstance(entry, dict):
                raise SignatureError(f"signatures[{i}]: expected an object")
            kid, sig = entry.get("keyid"), entry.get("sig")
            if not isinstance(kid, str) or not isinstance(sig, str):
                raise SignatureError(f"signatures[{i}]: keyid and sig must be strings")
            try:
                raw = base64.b64decode(sig, validate=True)
            except (binascii.Error, ValueError) as e:
                raise SignatureError(f"signatures[{i}].sig: not base64") from e
            out.append(Signature(kid, raw))
        return cls(tuple(out))


def sign(
    manifest_bytes: bytes, key: Ed25519PrivateKey, payload_type: str = PAYLOAD_TYPE
) -> Signature:
    """Sign manifest bytes with one private key (deterministic: Ed25519 has no nonce input).

    ``payload_type`` is bound into the signed message, so a signature over one kind of document
    (a manifest, a trust policy) never verifies as the other.
    """
    return Signature(key_id(key.public_key()), key.sign(pae(payload_type, manifest_bytes)))


def valid_signers(
    manifest_bytes: bytes,
    envelope: Envelope,
    keys: dict[str, Ed25519PublicKey],
    payload_type: str = PAYLOAD_TYPE,
) -> tuple[set[str], set[str], set[str]]:
    """Check each signature over ``payload_type`` and the bytes against the known ``keys``.

    Returns (key ids whose signature is valid, key ids that are unknown, key ids whose signature
    does not match). A key id counts once however often it appears.
    """
    message = pae(payload_type, manifest_bytes)
    good: set[str] = set()
    unknown: set[str] = set()
    bad: set[str] = set()
    for signature in envelope.signatures:
        key = keys.get(signature.keyid)
        if key is None:
            unknown.add(signature.keyid)
            continue
        try:
            key.verify(signature.sig, message)
        except InvalidSignature:
            bad.add(signature.keyid)
        else:
            good.add(signature.keyid)
    return good, unknown, bad - good
