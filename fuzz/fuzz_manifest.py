"""Fuzz target: the manifest parser (``runtime.verify.parse_manifest``).

Beyond the contract, a manifest that parses must survive its own round trip: its document, as
canonical JSON, parses again to the same document (design.md: unknown fields are kept).
"""

from __future__ import annotations

import atheris

from fuzz.harness import main

with atheris.instrument_imports(include=["runtime"]):
    from runtime.canonical import canonical_bytes
    from runtime.errors import EdgeshipError
    from runtime.verify import parse_manifest


def test_one_input(data: bytes) -> None:
    try:
        manifest = parse_manifest(data)
    except EdgeshipError:
        return
    doc = manifest.to_dict()
    again = parse_manifest(canonical_bytes(doc)).to_dict()
    if again != doc:
        raise AssertionError("a parsed manifest does not survive its own round trip")


if __name__ == "__main__":
    from fuzz.mutators import json_mutator

    main(test_one_input, json_mutator)
