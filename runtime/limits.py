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


DEFAULT_BUNDLE_LIMITS = BundleLimits()
DEFAULT_INPUT_LIMITS = InputLimits()
