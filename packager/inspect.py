"""``edgeship inspect`` and ``edgeship verify`` on the host.

Inspect reads a bundle without any trust decision (what does it claim, who signed it, do the
payload digests match); verify makes the device's signature and payload checks against given
public keys, without the device-only checks (target, anti-rollback floor).
"""

from __future__ import annotations

import hashlib
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Optional

from runtime.bundle import VerifiedBundle, read_bundle
from runtime.errors import BundleError, BundleFormatError, UsageError
from runtime.limits import DEFAULT_BUNDLE_LIMITS
from runtime.signing import Envelope, load_public_key
from runtime.tarfmt import TarReader
from runtime.trust import TrustPolicy
from runtime.verify import (
    MANIFEST_MEMBER,
    SIGNATURES_MEMBER,
    BundleVerifier,
    DeviceIdentity,
    PayloadChecker,
    check_member_header,
    parse_manifest,
)


def load_trust(pub_files: tuple[Path, ...], threshold: int = 1) -> TrustPolicy:
    keys = []
    for path in pub_files:
        try:
            keys.append((load_public_key(path.read_bytes(), str(path)), path.stem))
        except OSError as e:
            raise UsageError(f"cannot read {path}: {e.strerror}") from e
    return TrustPolicy.create(keys, threshold)


def verify_with_keys(
    bundle: Path, pub_files: tuple[Path, ...], threshold: int = 1, now: Optional[datetime] = None
) -> VerifiedBundle:
    """Check size, manifest, signatures (against ``pub_files``), expiry and every payload digest."""
    verifier = BundleVerifier(
        load_trust(pub_files, threshold),
        DeviceIdentity(arch="any", allow_any_target=True),
        now=now or datetime.now(timezone.utc),
    )
    return read_bundle(bundle, verifier)


CARD_MEMBER = "payload/card.md"
MAX_CARD_BYTES = 1024 * 1024


def inspect_bundle(bundle: Path) -> dict[str, Any]:
    """The manifest, the key ids the signatures claim (unverified: use ``verify_with_keys`` to
    check them), and whether the payload matches the manifest.

    Raises a BundleError if the archive or manifest is malformed; a payload mismatch is reported
    in the result (``payload_ok`` false, ``payload_error``), not raised.
    """
    limits = DEFAULT_BUNDLE_LIMITS
    try:
        stream = bundle.open("rb")
    except OSError as e:
        raise UsageError(f"cannot read {bundle}: {e.strerror}") from e
    with stream:
        reader = TarReader(stream)
        raw: dict[str, bytes] = {}
        for expected, limit in (
            (MANIFEST_MEMBER, limits.max_manifest_bytes),
            (SIGNATURES_MEMBER, limits.max_signatures_bytes),
        ):
            member = reader.next()
            if member is None:
                raise BundleFormatError(f"archive ends before {expected}")
            check_member_header(member.name, member.kind, member.size, expected, limit)
            raw[expected] = reader.read_all()
        manifest = parse_manifest(raw[MANIFEST_MEMBER])
        envelope = Envelope.from_bytes(raw[SIGNATURES_MEMBER])
        checker = PayloadChecker(manifest, limits)
        error = None
        card: list[bytes] = []
        try:
            while (member := reader.next()) is not None:
                checker.begin(member.name, member.kind, member.size)
                keep = member.name == CARD_MEMBER and member.size <= MAX_CARD_BYTES
                digest = hashlib.sha256()
                for chunk in reader.chunks():
                    digest.update(chunk)
                    if keep:
                        card.append(chunk)
                checker.end(digest.hexdigest())
            checker.finish()
        except BundleError as e:
            error = str(e)
    return {
        "file": str(bundle),
        "size": bundle.stat().st_size,
        "manifest_sha256": hashlib.sha256(raw[MANIFEST_MEMBER]).hexdigest(),
        "claimed_signers": [s.keyid for s in envelope.signatures],
        "payload_ok": error is None,
        "payload_error": error,
        "card": b"".join(card).decode("utf-8", "replace") if card and error is None else None,
        "manifest": manifest.to_dict(),
    }
