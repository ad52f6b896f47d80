"""Fuzz target: signed trust policy updates (``runtime.rotation``): parsing and the decision of
a device at policy version 1 that trusts the fuzzing key."""

from __future__ import annotations

import atheris

from fuzz.harness import FUZZ_KEY, main

with atheris.instrument_imports(include=["runtime"]):
    from runtime.errors import EdgeshipError
    from runtime.rotation import TrustUpdate, check_update
    from runtime.trust import TrustPolicy

CURRENT = TrustPolicy.create([(FUZZ_KEY.public_key(), "fuzz")])


def test_one_input(data: bytes) -> None:
    try:
        check_update(CURRENT, TrustUpdate.from_bytes(data))
    except EdgeshipError:
        return


if __name__ == "__main__":
    from fuzz.mutators import json_mutator

    main(test_one_input, json_mutator)
