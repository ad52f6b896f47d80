"""Size limits for untrusted inputs, in one documented place.

Every number is a default a device owner may raise in code; the CLI uses these defaults.
"""

from __future__ import annotations

from dataclasses import dataclass

MiB = 1024 * 1024


@dataclass(frozen=True)
class BundleLimits:
    """Limits applied while reading a bundle, before any signature is checked."""

    max_bundle_bytes: int = 4096 * MiB
    """Largest bundle file accepted (bytes)."""
    max_manifest_bytes: int = 1 * MiB
    """Largest manifest member (bytes)."""
    max_signatures_bytes: int = 64 * 1024
    """Largest signature envelope member (bytes)."""
    max_signatures: int = 16
    """Most signatures in one envelope."""
    max_members: int = 256
    """Most payload members."""
    max_name_length: int = 100
    """Longest member path (characters)."""


@dataclass(frozen=True)
class InputLimits:
    """Limits applied to prediction requests read from files or standard input."""

    max_request_bytes: int = 64 * MiB
    """Largest request file (bytes)."""
    max_rows: int = 100_000
    """Most rows (batch entries) in one request."""


@dataclass(frozen=True)
class TrustUpdateLimits:
    """Limits applied to a signed trust policy update before any signature is checked."""

    max_document_bytes: int = 256 * 1024
    """Largest update file (bytes)."""
    max_signatures: int = 16
    """Most signatures in one update."""
    max_keys: int = 64
    """Most keys the new policy may list."""


@dataclass(frozen=True)
class InboxLimits:
    """Limits the inbox folder watcher (``runtime/inbox.py``) applies to what appears there."""

    max_files_per_poll: int = 8
    """Most bundles installed or refused in one poll; the rest wait for the next poll."""
    max_entries_scanned: int = 10_000
    """Most folder entries looked at in one poll."""
    max_bundle_bytes: int = BundleLimits.max_bundle_bytes
    """Largest file taken from the inbox (bytes); a larger one is refused without being read."""


DEFAULT_BUNDLE_LIMITS = BundleLimits()
DEFAULT_TRUST_UPDATE_LIMITS = TrustUpdateLimits()
DEFAULT_INPUT_LIMITS = InputLimits()
DEFAULT_INBOX_LIMITS = InboxLimits()
