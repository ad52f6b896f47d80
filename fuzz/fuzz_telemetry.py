"""Fuzz target: the telemetry message parser (``runtime.telemetry.messages.parse_message``).

An input is ``TOPIC\\nPAYLOAD``: the topic is the bytes before the first newline (decoded as
UTF-8, bad bytes replaced, as an MQTT client hands topics over), the payload everything after.
"""

from __future__ import annotations

import atheris

from fuzz.harness import main

with atheris.instrument_imports(include=["runtime"]):
    from runtime.errors import EdgeshipError
    from runtime.telemetry.messages import parse_message


def split(data: bytes) -> tuple[str, bytes]:
    topic, _, payload = data.partition(b"\n")
    return topic.decode("utf-8", errors="replace"), payload


def test_one_input(data: bytes) -> None:
    topic, payload = split(data)
    try:
        parse_message(topic, payload)
    except EdgeshipError:
        return


if __name__ == "__main__":
    from fuzz.mutators import topic_json_mutator

    main(test_one_input, topic_json_mutator)
