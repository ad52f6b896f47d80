"""Hostile messages: each is counted under its reason and dropped; the monitor carries on."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path
from typing import Any, Callable

import pytest

from packager.fleet.store import open_store
from packager.fleet.writer import bad_reason, check_names
from runtime.errors import TelemetryMessageError
from runtime.telemetry.messages import MAX_MESSAGE_BYTES, encode, parse_message
from tests.broker import Broker
from tests.packager.fleet.helpers import (
    PREFIX,
    MonitorProcess,
    Publisher,
    status,
    telemetry,
    wait_for,
)

TOPIC = f"{PREFIX}/lab/dev-1/telemetry"


def _doc(**changes: Any) -> bytes:
    doc = telemetry("lab", "dev-1", 5)
    doc.update(changes)
    return json.dumps(doc).encode()


def _model(**changes: Any) -> bytes:
    doc = telemetry("lab", "dev-1", 5)
    doc["models"]["digits"].update(changes)
    return json.dumps(doc).encode()


BAD = [
    # id, topic, payload, reason
    ("malformed json", TOPIC, b'{"schema": ', "malformed"),
    ("not utf-8", TOPIC, b"\xff\xfe{}", "malformed"),
    ("not an object", TOPIC, b"[1, 2]", "malformed"),
    ("nan constant", TOPIC, _doc(window_s=float("nan")), "malformed"),
    (
        "too deep",
        TOPIC,
        _model(predictions={"a": {"b": {"c": {"d": {"e": {"f": {}}}}}}}),
        "malformed",
    ),
    ("depth bomb", TOPIC, b"[" * 100_000 + b"]" * 100_000, "malformed"),
    ("oversized", TOPIC, b" " * (MAX_MESSAGE_BYTES + 1), "oversized"),
    ("unknown schema version", TOPIC, _doc(schema="edgeship.telemetry/v2"), "schema"),
    (
        "status schema on telemetry topic",
        TOPIC,
        json.dumps(status("lab", "dev-1", 1)).encode(),
        "schema",
    ),
    ("requests is a string", TOPIC, _model(requests="many"), "invalid"),
    ("negative errors", TOPIC, _model(errors=-1), "invalid"),
    ("seq is a bool", TOPIC, _doc(seq=True), "invalid"),
    ("latency not numbers", TOPIC, _model(latency_ms={"p95": "slow"}), "invalid"),
    ("ts without zone", TOPIC, _doc(ts="2026-01-01T00:00:00"), "invalid"),
    ("models is a list", TOPIC, _doc(models=[]), "invalid"),
    ("unexpected topic level", f"{PREFIX}/lab/dev 1!/telemetry", _doc(device="dev 1!"), "topic"),
    ("deploy is not a device topic", f"{PREFIX}/lab/dev-1/deploy", _doc(), "topic"),
    ("claims another device", TOPIC, _doc(device="dev-2"), "spoofed"),
    ("claims another fleet", TOPIC, _doc(fleet="prod"), "spoofed"),
    (
        "model name with a slash",
        TOPIC,
        json.dumps(
            {
                **telemetry("lab", "dev-1", 5),
                "models": {"../x": telemetry("lab", "dev-1", 5)["models"]["digits"]},
            }
        ).encode(),
        "names",
    ),
]


@pytest.mark.parametrize(
    ("topic", "payload", "reason"), [b[1:] for b in BAD], ids=[b[0] for b in BAD]
)
def test_each_bad_message_has_its_reason(topic: str, payload: bytes, reason: str) -> None:
    with pytest.raises(TelemetryMessageError) as caught:
        check_names(parse_message(topic, payload, PREFIX))
    assert bad_reason(topic, payload, PREFIX, caught.value) == reason


def test_the_good_message_passes() -> None:
    message = parse_message(TOPIC, encode(telemetry("lab", "dev-1", 5)), PREFIX)
    check_names(message)
    assert message.seq == 5


def test_monitor_counts_and_drops_them_all_and_stays_up(
    mosquitto: Callable[..., Broker], tmp_path: Path
) -> None:
    broker = mosquitto()
    db = f"sqlite:///{tmp_path / 'fleet.db'}"
    monitor = MonitorProcess(tmp_path, ["--broker", broker.url(), "--db", db, "--json-log"]).start()
    try:
        device = Publisher(broker.port, "dev-1")
        mids = [device.send_raw(topic, payload) for _, topic, payload, _ in BAD]
        mids.append(device.send(telemetry("lab", "dev-1", 6)))
        device.wait_acked(mids)
        with open_store(db) as store:
            wait_for(lambda: store.stored_count() == 1, what="the good message")
        summary = monitor.stop()
    finally:
        if monitor.proc is not None:
            monitor.kill()
    # the monitor does not subscribe to deploy topics: that one never reaches it
    delivered = [b for b in BAD if not b[1].endswith("/deploy")]
    assert summary["bad_by_reason"] == dict(Counter(b[3] for b in delivered))
    assert (summary["stored"], summary["bad"]) == (1, len(delivered))
    log = monitor.log_text()
    assert "dropped a bad message" in log and "(spoofed)" in log
    device.close()
