"""The alert message (edgeship.alert/v1): round trip and hostile payloads."""

from __future__ import annotations

import json

import pytest

from packager.fleet.alerts import Alert, encode_alert, parse_alert
from runtime.errors import TelemetryMessageError
from runtime.telemetry.messages import MAX_MESSAGE_BYTES

ALERT = Alert(
    rule="p95-slow",
    kind="latency",
    severity="warning",
    fleet="lab",
    device="dev-1",
    model="digits",
    value=81.5,
    threshold=50.0,
    message="slow",
    opened=1_800_000_000.25,
    id=7,
)


def test_round_trip_open_and_cleared() -> None:
    assert parse_alert(encode_alert(ALERT)) == ALERT
    cleared = ALERT.with_clear(1_800_000_100.5)
    doc = json.loads(encode_alert(cleared))
    assert doc["schema"] == "edgeship.alert/v1" and doc["state"] == "cleared"
    assert doc["opened"] == "2027-01-15T08:00:00.250000Z"
    assert parse_alert(encode_alert(cleared)) == cleared


def _doc(**changes: object) -> bytes:
    doc = ALERT.to_dict()
    doc.update(changes)
    return json.dumps(doc).encode()


BAD = {
    "not json": b"{",
    "not an object": b"[]",
    "oversized": b" " * (MAX_MESSAGE_BYTES + 1),
    "unknown schema": _doc(schema="edgeship.alert/v2"),
    "rule not a string": _doc(rule=3),
    "bad severity": _doc(severity="panic"),
    "value not a number": _doc(value="high"),
    "bool id": _doc(id=True),
    "open with cleared time": _doc(cleared="2027-01-15T08:00:00Z"),
    "bad fleet": _doc(fleet="a/b"),
    "bad time": _doc(opened="yesterday"),
}


@pytest.mark.parametrize("payload", BAD.values(), ids=BAD.keys())
def test_bad_alert_messages_are_refused(payload: bytes) -> None:
    with pytest.raises(TelemetryMessageError):
        parse_alert(payload)
