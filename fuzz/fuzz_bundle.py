"""Fuzz target: the bundle reader (``runtime.tarfmt.TarReader`` and ``runtime.bundle.read_bundle``)
from bytes.

Each input goes through two readers: a bare ``TarReader`` pass over every member, and
``read_bundle`` extracting into an empty folder for a device that trusts the fuzzing key (so a
mutated payload behind an intact, signed manifest reaches the payload checks and the writes).
Beyond the contract: nothing may be written outside the destination folder.
"""

from __future__ import annotations

import contextlib
import io
import os
import shutil
import tempfile
from datetime import datetime, timezone
from pathlib import Path

import atheris

from fuzz.harness import FUZZ_KEY, SCRATCH_ENV, SOURCE_DATE_EPOCH, main

with atheris.instrument_imports(include=["runtime"]):
    from runtime.bundle import read_bundle
    from runtime.errors import EdgeshipError
    from runtime.tarfmt import TarReader
    from runtime.trust import TrustPolicy
    from runtime.verify import BundleVerifier, DeviceIdentity

POLICY = TrustPolicy.create([(FUZZ_KEY.public_key(), "fuzz")])
NOW = datetime.fromtimestamp(SOURCE_DATE_EPOCH + 86400, timezone.utc)
ROOT = Path(os.environ.get(SCRATCH_ENV) or tempfile.mkdtemp(prefix="edgeship-fuzz-"))
BUNDLE = ROOT / "input.eship"
DEST = ROOT / "dest"


def read_members(data: bytes) -> None:
    reader = TarReader(io.BytesIO(data))
    while reader.next() is not None:
        reader.skip_data()


def test_one_input(data: bytes) -> None:
    ROOT.mkdir(parents=True, exist_ok=True)
    with contextlib.suppress(EdgeshipError):
        read_members(data)
    BUNDLE.write_bytes(data)
    if DEST.exists():
        shutil.rmtree(DEST)
    DEST.mkdir()
    verifier = BundleVerifier(POLICY, DeviceIdentity("x86_64", allow_any_target=True), now=NOW)
    with contextlib.suppress(EdgeshipError):
        read_bundle(BUNDLE, verifier, dest=DEST)
    found = sorted(p.name for p in ROOT.iterdir())
    if found != ["dest", "input.eship"]:
        raise AssertionError(f"the reader wrote outside its destination: {found}")


if __name__ == "__main__":
    from fuzz.mutators import bundle_mutator

    main(test_one_input, bundle_mutator)
