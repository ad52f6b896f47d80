"""Bundle verification: every trust decision, in a fixed order, with no I/O.

Like a trusted-metadata set, :class:`BundleVerifier` is fed bytes and member headers by a reader
(``runtime.bundle``) and answers with a typed error or a verified value. The order is fixed by
design.md §2: size limits → manifest parse → signatures → expiry → target → sequence → payload.
Calling the steps out of order raises RuntimeError.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Any, Mapping, Optional

from runtime.canonical import strict_loads
from runtime.clock import DEFAULT_CLOCK_LIMITS, ClockLimits, check_validity
from runtime.errors import (
    BundleFormatError,
    BundleSizeError,
    ManifestError,
    PayloadError,
    RollbackError,
    TargetMismatchError,
)
from runtime.limits import DEFAULT_BUNDLE_LIMITS, BundleLimits
from runtime.manifest import PATH_RE, FileEntry, Manifest

if TYPE_CHECKING:  # loading the crypto library costs a process that only reads manifests
    from runtime.trust import TrustPolicy

MANIFEST_MEMBER = "manifest.json"
SIGNATURES_MEMBER = "signatures.json"
PAYLOAD_PREFIX = "payload/"


@dataclass(frozen=True)
class DeviceIdentity:
    """What the verifier needs to know about the device: its architecture and, optionally, the
    profile names it accepts (``None``: any profile of its architecture)."""

    arch: str
    profiles: Optional[frozenset[str]] = None
    allow_any_target: bool = False


@dataclass(frozen=True)
class VerifiedManifest:
    manifest: Manifest
    manifest_bytes: bytes
    envelope_bytes: bytes
    signers: frozenset[str]


def check_member_header(name: str, kind: str, size: int, expected: str, limit: int) -> None:
    """Check one of the two leading members (manifest, signatures) before reading it."""
    if name != expected:
        raise BundleFormatError(f"expected member {expected!r} here, found {name!r}")
    if kind != "file":
        raise BundleFormatError(f"{expected} is a {kind}, not a regular file")
    if size > limit:
        raise BundleSizeError(f"{expected} is {size} bytes, the limit is {limit}")


class BundleVerifier:
    """Decides whether a bundle may be installed on this device."""

    def __init__(
        self,
        policy: TrustPolicy,
        device: DeviceIdentity,
        *,
        now: datetime,
        floors: Optional[Mapping[str, int]] = None,
        limits: BundleLimits = DEFAULT_BUNDLE_LIMITS,
        clock: ClockLimits = DEFAULT_CLOCK_LIMITS,
    ) -> None:
        self.policy = policy
        self.device = device
        self.now = now
        self.floors = dict(floors or {})
        self.limits = limits
        self.clock = clock

    def floor(self, name: str) -> int:
        """The lowest sequence acceptable for model ``name`` on this device."""
        return max(self.floors.get(name, 0), self.policy.min_sequence)

    def check_size(self, bundle_bytes: int) -> None:
        if bundle_bytes > self.limits.max_bundle_bytes:
            raise BundleSizeError(
                f"bundle is {bundle_bytes} bytes, the limit is {self.limits.max_bundle_bytes}"
            )

    def check_manifest(self, manifest_bytes: bytes, envelope_bytes: bytes) -> VerifiedManifest:
        """Steps 1-6: limits, parse, signatures, validity period (``runtime.clock``), target,
        sequence."""
        if len(manifest_bytes) > self.limits.max_manifest_bytes:
            raise BundleSizeError(f"manifest larger than {self.limits.max_manifest_bytes} bytes")
        if len(envelope_bytes) > self.limits.max_signatures_bytes:
            raise BundleSizeError(f"signatures larger than {self.limits.max_signatures_bytes}")
        from runtime.signing import Envelope

        manifest = parse_manifest(manifest_bytes)
        envelope = Envelope.from_bytes(envelope_bytes, self.limits)
        signers = self.policy.check_signatures(manifest_bytes, envelope)
        check_validity(manifest, self.now, self.clock)
        self._check_target(manifest)
        floor = self.floor(manifest.name)
        if manifest.sequence < floor:
            raise RollbackError(
                f"{manifest.name} {manifest.version} has sequence {manifest.sequence}, below this "
                f"device's floor {floor} (a newer bundle was installed, or the trust policy "
                "sets a minimum)"
            )
        if len(manifest.files) > self.limits.max_members:
            raise BundleSizeError(f"more than {self.limits.max_members} payload files")
        return VerifiedManifest(manifest, manifest_bytes, envelope_bytes, signers)

    def _check_target(self, manifest: Manifest) -> None:
        if self.device.allow_any_target:
            return
        target = manifest.target
        if target.arch != self.device.arch:
            raise TargetMismatchError(
                f"bundle is for {target.profile} ({target.arch}); this device is {self.device.arch}"
            )
        if self.device.profiles is not None and target.profile not in self.device.profiles:
            accepted = ", ".join(sorted(self.device.profiles))
            raise TargetMismatchError(
                f"bundle is for profile {target.profile}; this device accepts {accepted}"
            )

    def payload(self, verified: VerifiedManifest) -> PayloadChecker:
        """Step 7: a checker for the payload members that follow the signatures."""
        return PayloadChecker(verified.manifest, self.limits)


class PayloadChecker:
    """Checks payload members as a reader meets them; ``finish`` checks nothing is missing."""

    def __init__(self, manifest: Manifest, limits: BundleLimits) -> None:
        self._expected = {entry.path: entry for entry in manifest.files}
        self._seen: set[str] = set()
        self._open: Optional[FileEntry] = None
        self._limits = limits

    def begin(self, name: str, kind: str, size: int) -> FileEntry:
        """Check a member header before its data is read; returns the manifest entry."""
        if self._open is not None:
            raise RuntimeError("end() the previous member first")
        if len(name) > self._limits.max_name_length:
            raise PayloadError(f"member name longer than {self._limits.max_name_length}")
        if name.startswith("/"):
            raise PayloadError(f"member {name!r} has an absolute path")
        if ".." in name.split("/"):
            raise PayloadError(f"member {name!r} escapes the bundle root")
        if kind != "file":
            raise PayloadError(f"member {name!r} is a {kind}; only regular files are allowed")
        if not name.startswith(PAYLOAD_PREFIX) or not PATH_RE.match(name[len(PAYLOAD_PREFIX) :]):
            raise PayloadError(f"member {name!r} is not a payload file")
        path = name[len(PAYLOAD_PREFIX) :]
        if path in self._seen:
            raise PayloadError(f"member {name!r} appears twice")
        entry = self._expected.get(path)
        if entry is None:
            raise PayloadError(f"member {name!r} is not listed in the manifest")
        if size != entry.size:
            relation = "larger" if size > entry.size else "smaller"
            raise PayloadError(
                f"member {name!r} is {size} bytes, {relation} than the {entry.size} declared"
            )
        self._seen.add(path)
        self._open = entry
        return entry

    def end(self, sha256_hex: str) -> None:
        entry, self._open = self._open, None
        if entry is None:
            raise RuntimeError("begin() a member first")
        if sha256_hex != entry.sha256:
            raise PayloadError(f"payload/{entry.path}: SHA-256 does not match the manifest")

    def finish(self) -> None:
        if self._open is not None:
            raise RuntimeError("end() the last member first")
        missing = sorted(set(self._expected) - self._seen)
        if missing:
            raise PayloadError(f"missing payload member(s): {', '.join(missing)}")


def parse_manifest(data: bytes) -> Manifest:
    """Parse manifest bytes; raises ManifestError for bad UTF-8, bad JSON or bad fields.

    Stricter than ``json.loads``: a key repeated in one object (readers that keep the first and
    readers that keep the last would see different manifests under one signature) and numbers
    that are not finite (``NaN``, or ``1e999`` read as infinity) are refused.
    """
    try:
        doc: Any = strict_loads(data)
    except (UnicodeDecodeError, ValueError, RecursionError) as e:
        raise ManifestError(f"manifest is not JSON: {e}") from e
    manifest = Manifest.from_dict(doc)
    _check_layout(manifest.files)
    return manifest


def _check_layout(files: tuple[FileEntry, ...]) -> None:
    """Refuse a file list no folder can hold: a path that is also the folder of another."""
    paths = {entry.path for entry in files}
    for entry in files:
        parts = entry.path.split("/")
        for i in range(1, len(parts)):
            folder = "/".join(parts[:i])
            if folder in paths:
                raise ManifestError(f"manifest.files: {folder!r} is both a file and a folder")
