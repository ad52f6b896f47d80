"""What every fuzz target shares: the contract, the fixed signing key, and the libFuzzer entry.

The contract: any input either parses or raises an :class:`runtime.errors.EdgeshipError`
subclass. Any other exception, a crash, a hang (libFuzzer's ``-timeout``) or running out of
memory is a finding. This module imports nothing from ``runtime``, so a target can import the
code under test inside ``atheris.instrument_imports()`` for coverage feedback.
"""

from __future__ import annotations

import hashlib
import sys
from typing import Callable, Optional

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

FUZZ_KEY = Ed25519PrivateKey.from_private_bytes(hashlib.sha256(b"edgeship fuzzing key").digest())
"""Signs the seed bundles and trust updates, so mutated inputs can pass the signature step and
reach the code behind it. A published test key: never trust it anywhere."""

SOURCE_DATE_EPOCH = 1767225600
"""The seeds' build clock (2026-01-01T00:00:00Z); seed bundles never expire."""

SCRATCH_ENV = "EDGESHIP_FUZZ_SCRATCH"
"""A folder a target may write into (``fuzz/run.py`` removes it afterwards)."""


def main(
    test_one_input: Callable[[bytes], None],
    mutator: Optional[Callable[[bytes, int, int], bytes]] = None,
) -> None:
    """Run libFuzzer on ``test_one_input`` with the command line's options, mutating inputs
    with ``mutator`` (``fuzz.mutators``) when given; never returns. With files as arguments
    instead of a corpus folder, it runs just those inputs: how a finding is reproduced."""
    import atheris

    atheris.Setup(sys.argv, test_one_input, custom_mutator=mutator)
    atheris.Fuzz()
