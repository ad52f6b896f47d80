"""A fuzz target that breaks the contract on purpose (any JSON object payload raises ValueError):
tests/reliability/test_fuzz_smoke.py checks that the runner reports it as a finding."""

from __future__ import annotations

from fuzz.harness import main


def test_one_input(data: bytes) -> None:
    if b"\n{" in data:
        raise ValueError("planted finding")


if __name__ == "__main__":
    main(test_one_input)
