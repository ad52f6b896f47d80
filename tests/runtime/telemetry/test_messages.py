"""The strict telemetry parser (runtime/telemetry/messages.py): what it takes, what it refuses and
why, and the depth bound it reads from a payload's bytes before parsing it."""

from __future__ import annotations

import json
from datetime import datetime, timezone
from typing import Any, Callable

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from runtime.errors import TelemetryMessageError
from runtime.telemetry.messages import (
    MAX_DEPTH,
    MAX_FEATURES,
    MAX_MESSAGE_BYTES,
    MAX_MODELS,
    Topic,
    encode,
    envelope,
    parse_message,
    parse_topic,
)

PREFIX = "edgeship/v1"
TS = datetime(2026, 12, 2, 7, 52, 34, 148270, tzinfo=timezone.utc)


KINDS = {"edgeship.telemetry/v1": "telemetry", "edgeship.status/v1": "status",
         "edgeship.event/v1": "events"}  # fmt: skip


def topic(kind: str) -> str:
    return f"{PREFIX}/lab/dev-1/{kind}"


def window(**changes: Any) -> dict[str, Any]:
    """A telemetry window as a device sends it (docs/telemetry.md)."""
    doc = envelope("telemetry", "lab", "dev-1", 7, TS)
    doc.update(
        window_s=10.0,
        models={"digits": {
            "version": "1.2.0", "requests": 120, "errors": 1, "rejected": 2,
            "rejected_reasons": {"shape": 2},
            "latency_ms": {"p50": 0.41, "p95": 0.93, "p99": 1.31, "max": 2.02},
            "predictions": {"count": 120, "classes": {"0": 40, "1": 80}},
            "drift": {f"f{i}": {"psi": 0.01 * i, "js": 0.002 * i} for i in range(8)},
            "feedback": {"count": 12, "accuracy": 0.92},
        }},
        system={"rss_mb": 61.2, "cpu_percent": 3.1, "threads": 8},
    )  # fmt: skip
    doc.update(changes)
    return doc


def model(**changes: Any) -> dict[str, Any]:
    doc = window()
    doc["models"]["digits"].update(changes)
    return doc


def status(**changes: Any) -> dict[str, Any]:
    doc = envelope("status", "lab", "dev-1", 6, TS)
    doc.update(state="online", runtime_version="0.1.0", models=[
        {"name": "digits", "version": "1.2.0", "sequence": 3, "digest": "ab" * 32}
    ])  # fmt: skip
    doc.update(changes)
    return doc


def event(**changes: Any) -> dict[str, Any]:
    doc = envelope("events", "lab", "dev-1", 8, TS)
    doc.update(event="install", model="digits", detail={"version": "1.2.0"})
    doc.update(changes)
    return doc


def parse(doc: dict[str, Any]) -> Any:
    return parse_message(topic(KINDS[doc["schema"]]), json.dumps(doc).encode())


def nested(levels: int, inner: Any = 1) -> Any:
    """``inner`` inside ``levels`` arrays and objects, alternating."""
    value = inner
    for level in range(levels):
        value = [value] if level % 2 else {"k": value}
    return value


# --- what passes ----------------------------------------------------------------------------------


GOOD: dict[str, Callable[[], dict[str, Any]]] = {
    "window": window,
    "window without requests (latency null)": lambda: model(
        latency_ms={"p50": None, "p95": None, "p99": None, "max": None}, requests=0
    ),
    "window without optional parts": lambda: model(predictions=None, drift=None, feedback=None),
    "window without system": lambda: window(system=None),
    "drift score null, integer scores": lambda: model(drift={"a": {"psi": None, "js": 0}}),
    "an int as large as a float holds exactly": lambda: window(window_s=2**53),
    "birth": status,
    "last will": lambda: envelope("status", "lab", "dev-1", 5, TS) | {"state": "offline"},
    "event": event,
    "event without model or detail": lambda: event(model=None, detail=None),
    "brackets in strings do not nest": lambda: event(detail={"x": "[" * 100, "y": "{" * 100}),
    "an escaped quote before brackets": lambda: event(detail={"x": '"' + "[" * 100}),
    "brackets in keys": lambda: event(detail={"[[[[[[[[[[": "}}}}}}}}}}"}),
    "brackets in non-ASCII strings": lambda: event(detail={"é😀": "😀[" * 50}),
    "nesting as deep as allowed": lambda: event(detail=nested(MAX_DEPTH - 1)),
    "empty arrays and objects one level deeper": lambda: event(
        detail={"a": nested(MAX_DEPTH - 2, []), "b": nested(MAX_DEPTH - 2, {})}
    ),
}


@pytest.mark.parametrize("make", GOOD.values(), ids=GOOD.keys())
def test_good_messages_pass(make: Callable[[], dict[str, Any]]) -> None:
    doc = make()
    message = parse(doc)
    assert (message.fleet, message.device, message.seq) == ("lab", "dev-1", doc["seq"])
    assert message.doc == doc


def test_the_parsed_envelope() -> None:
    message = parse_message(topic("telemetry"), encode(window()))
    assert (message.kind, message.fleet, message.device, message.seq) == (
        "telemetry", "lab", "dev-1", 7
    )  # fmt: skip
    assert message.ts == TS and message.ts.tzinfo is timezone.utc


def test_a_bytearray_payload_passes() -> None:
    assert parse_message(topic("events"), bytearray(encode(event()))).seq == 8


# --- what is refused, and why ---------------------------------------------------------------------


def raw(payload: bytes, kind: str = "telemetry") -> tuple[str, bytes]:
    return topic(kind), payload


def doc_of(doc: dict[str, Any], kind: str = "") -> tuple[str, bytes]:
    """``doc`` on the topic of ``kind`` (by default the kind its schema names)."""
    return topic(kind or KINDS.get(doc["schema"], "telemetry")), json.dumps(doc).encode()


BAD: dict[str, tuple[tuple[str, bytes], str]] = {
    # id: ((topic, payload), what the error says)
    "not under the prefix": (("other/lab/dev-1/telemetry", encode(window())), "is not under"),
    "a deploy topic": ((f"{PREFIX}/lab/dev-1/deploy", encode(window())), "unexpected topic"),
    "a topic level too many": ((f"{PREFIX}/lab/x/dev-1/telemetry", b"{}"), "unexpected topic"),
    "a device id with a space": ((f"{PREFIX}/lab/dev 1/telemetry", b"{}"), "not a valid id"),
    "oversized": (raw(b" " * (MAX_MESSAGE_BYTES + 1)), "over"),
    "not UTF-8": (raw(b'{"a": "\xff"}'), "not UTF-8 JSON"),
    "not JSON": (raw(b'{"schema": '), "not UTF-8 JSON"),
    "trailing data": (raw(encode(window()) + b" x"), "not UTF-8 JSON"),
    "NaN": (raw(encode(window())[:-1] + b', "x": NaN}'), "not UTF-8 JSON"),
    "Infinity": (raw(encode(window())[:-1] + b', "x": -Infinity}'), "not UTF-8 JSON"),
    "not an object": (raw(b"[1, 2]"), "must be a JSON object"),
    "a depth bomb": (raw(b"[" * 100_000 + b"]" * 100_000), "nests deeper"),
    "a depth bomb in an object": (doc_of(event(detail={"x": nested(100)})), "nests deeper"),
    "one value too deep": (doc_of(event(detail=nested(MAX_DEPTH))), "nests deeper"),
    "a non-empty array one level too deep": (
        doc_of(event(detail={"a": nested(MAX_DEPTH - 2, [[]]), "b": nested(MAX_DEPTH - 2, [])})),
        "nests deeper",
    ),
    "an escaped backslash ends the string before the brackets": (
        doc_of(event(detail={"x": "\\", "y": nested(MAX_DEPTH)})),
        "nests deeper",
    ),
    "unknown schema version": (doc_of(window(schema="edgeship.telemetry/v2")), "schema"),
    "a status on the telemetry topic": (doc_of(status(), "telemetry"), "schema"),
    "claims another device": (doc_of(window(device="dev-2")), "claims"),
    "claims another fleet": (doc_of(window(fleet="prod")), "claims"),
    "seq is a bool": (doc_of(window(seq=True)), "seq must be"),
    "seq is negative": (doc_of(window(seq=-1)), "seq must be"),
    "seq is a float": (doc_of(window(seq=1.0)), "seq must be"),
    "ts without zone": (doc_of(window(ts="2026-01-01T00:00:00")), "no time zone"),
    "ts not a time": (doc_of(window(ts="yesterday")), "not an ISO 8601"),
    "ts a number": (doc_of(window(ts=1)), "ts must be"),
    # telemetry
    "window_s negative": (doc_of(window(window_s=-1)), "window_s must be"),
    "window_s a bool": (doc_of(window(window_s=True)), "window_s must be"),
    "window_s too large an int": (doc_of(window(window_s=2**53 + 1)), "window_s must be"),
    "window_s infinite": (raw(encode(window(window_s=1.5)).replace(b"1.5", b"1e400")), "window_s"),
    "models a list": (doc_of(window(models=[])), "models must be an object"),
    "too many models": (
        doc_of(window(models={f"m{i}": {} for i in range(MAX_MODELS + 1)})),
        "models must be an object",
    ),
    "a model not an object": (doc_of(window(models={"digits": 3})), "models.digits must be"),
    "version a number": (doc_of(model(version=1)), "version must be a string"),
    "version too long": (doc_of(model(version="1" * 257)), "version must be a string"),
    "requests a string": (doc_of(model(requests="many")), "requests must be"),
    "errors negative": (doc_of(model(errors=-1)), "errors must be"),
    "rejected a float": (doc_of(model(rejected=1.0)), "rejected must be"),
    "latency missing": (doc_of(model(latency_ms=None)), "latency_ms must be"),
    "latency a string": (doc_of(model(latency_ms={"p95": "slow"})), "latency_ms must be"),
    "latency a bool": (doc_of(model(latency_ms={"max": False})), "latency_ms must be"),
    "predictions a list": (doc_of(model(predictions=[1])), "predictions must be"),
    "drift a list": (doc_of(model(drift=[])), "drift must be"),
    "drift scores a number": (doc_of(model(drift={"a": 0.1})), "drift must be"),
    "drift score a string": (doc_of(model(drift={"a": {"psi": "high"}})), "drift must be"),
    "drift score a bool": (doc_of(model(drift={"a": {"psi": True}})), "drift must be"),
    "drift score too large an int": (doc_of(model(drift={"a": {"psi": 2**60}})), "drift must be"),
    "too many drift features": (
        doc_of(model(drift={f"f{i}": {} for i in range(MAX_FEATURES + 1)})),
        "drift must be",
    ),
    "feedback a number": (doc_of(model(feedback=1)), "feedback must be"),
    "system a list": (doc_of(window(system=[])), "system must be"),
    "rss_mb a string": (doc_of(window(system={"rss_mb": "lots"})), "rss_mb must be"),
    # status
    "state unknown": (doc_of(status(state="asleep")), "state must be"),
    "state a list": (doc_of(status(state=["online"])), "state must be"),
    "runtime_version missing": (doc_of(status(runtime_version=None)), "runtime_version must be"),
    "status models an object": (doc_of(status(models={})), "models must be a list"),
    "too many status models": (
        doc_of(status(models=status()["models"] * (MAX_MODELS + 1))),
        "models must be a list",
    ),
    "a status model not an object": (doc_of(status(models=["digits"])), "models[] entries"),
    "a status model without name": (
        doc_of(status(models=[{**status()["models"][0], "name": None}])),
        "name must be",
    ),
    "a negative bundle sequence": (
        doc_of(status(models=[{**status()["models"][0], "sequence": -1}])),
        "sequence must be",
    ),
    "a digest not a string": (
        doc_of(status(models=[{**status()["models"][0], "digest": 0}])),
        "digest must be",
    ),
    # events
    "unknown event": (doc_of(event(event="reboot")), "event must be one of"),
    "event a list": (doc_of(event(event=["install"])), "event must be one of"),
    "event model a number": (doc_of(event(model=1)), "model must be a string"),
    "event detail a list": (doc_of(event(detail=[])), "detail must be an object"),
}


@pytest.mark.parametrize(("message", "says"), BAD.values(), ids=BAD.keys())
def test_bad_messages_are_refused_with_their_reason(message: tuple[str, bytes], says: str) -> None:
    with pytest.raises(TelemetryMessageError) as caught:
        parse_message(*message, PREFIX)
    assert says in str(caught.value)


def test_a_payload_that_is_not_bytes_is_refused() -> None:
    with pytest.raises(TelemetryMessageError, match="must be bytes"):
        parse_message(topic("events"), encode(event()).decode())  # type: ignore[arg-type]


# --- topics ---------------------------------------------------------------------------------------


def test_topics_parse_the_same_every_time() -> None:
    for _ in range(3):
        assert parse_topic(topic("status")) == Topic("lab", "dev-1", "status")
    # a topic parsed under one prefix is not taken under another
    with pytest.raises(TelemetryMessageError, match="is not under"):
        parse_topic(topic("status"), "other/v1")
    assert parse_topic("other/v1/lab/dev-1/status", "other/v1") == Topic("lab", "dev-1", "status")


def test_a_refused_topic_is_refused_every_time() -> None:
    for _ in range(3):
        with pytest.raises(TelemetryMessageError, match="unexpected topic"):
            parse_topic(f"{PREFIX}/lab/dev-1/secrets")
    with pytest.raises(TelemetryMessageError, match="is not under"):
        parse_topic(b"edgeship/v1/lab/dev-1/status")  # type: ignore[arg-type]


# --- the depth bound, against a walk of the parsed document --------------------------------------


def within_depth(value: Any, depth: int = 0) -> bool:
    """The bound as first written: no value deeper than MAX_DEPTH, the document at depth 0."""
    if depth > MAX_DEPTH:
        return False
    if isinstance(value, dict):
        return all(within_depth(item, depth + 1) for item in value.values())
    if isinstance(value, list):
        return all(within_depth(item, depth + 1) for item in value)
    return True


TRICKY = st.text(alphabet=st.sampled_from('[]{}"\\/ aé😀\n:,'), max_size=12) | st.text(max_size=8)
SCALARS = (
    st.none() | st.booleans() | st.integers(-(2**60), 2**60) | TRICKY
    | st.floats(allow_nan=False, allow_infinity=False)
)  # fmt: skip
VALUES = st.recursive(
    SCALARS,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(TRICKY, inner, max_size=3),
    max_leaves=12,
)


@st.composite
def details(draw: st.DrawFn) -> dict[str, Any]:
    """An event's detail whose deepest value lies around the bound."""
    value = draw(VALUES)
    for _ in range(draw(st.integers(0, MAX_DEPTH + 2))):
        wrap = draw(st.sampled_from([lambda v: [v], lambda v: {"[": v}, lambda v: [TS.year, v]]))
        value = wrap(value)
    return {draw(TRICKY): value, draw(TRICKY): draw(VALUES)}


@settings(max_examples=600, deadline=None)
@given(
    details(),
    st.sampled_from([(",", ":"), (", ", ": ")]),
    st.booleans(),
    st.sampled_from([None, 1]),
)
def test_the_depth_bound_matches_a_walk_of_the_document(
    detail: dict[str, Any], separators: tuple[str, str], ascii_only: bool, indent: Any
) -> None:
    doc = event(detail=detail)
    payload = json.dumps(doc, separators=separators, ensure_ascii=ascii_only, indent=indent)
    if within_depth(doc):
        assert parse_message(topic("events"), payload.encode()).doc == doc
    else:
        with pytest.raises(TelemetryMessageError, match="nests deeper"):
            parse_message(topic("events"), payload.encode())
