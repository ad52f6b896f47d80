"""Alerts: the value record, and its message on ``PREFIX/FLEET/alerts`` (``edgeship.alert/v1``).

An alert is open from the moment its rule's condition holds for a device (or, for fleet-wide
rules such as version skew, for a fleet and model) until the condition clears. At most one alert
is open per :attr:`Alert.key`; the store enforces it. The monitor publishes each alert twice, when
it opens and when it clears, with the same ``id``.

Message (JSON, compact, QoS 1, not retained)::

    {"schema": "edgeship.alert/v1", "id": 17, "state": "open", "rule": "p95-slow",
     "kind": "latency", "severity": "warning", "fleet": "lab", "device": "dev-7",
     "model": "digits", "value": 81.5, "threshold": 50.0, "message": "…",
     "opened": "2026-11-22T10:00:00.000000Z", "cleared": null}

``device`` and ``model`` are empty strings when the rule is not about one device or model.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, replace
from datetime import datetime, timezone
from typing import Any, Optional

from runtime.errors import TelemetryMessageError
from runtime.telemetry.messages import (
    ALERT_SCHEMA,
    MAX_MESSAGE_BYTES,
    alerts_topic,
    check_id,
    encode,
    format_ts,
    parse_ts,
)

SEVERITIES = ("info", "warning", "critical")


@dataclass(frozen=True)
class Alert:
    """One alert, open (``cleared`` is None) or cleared. Times are epoch seconds."""

    rule: str
    kind: str
    severity: str
    fleet: str
    device: str
    model: str
    value: float
    threshold: float
    message: str
    opened: float
    cleared: Optional[float] = None
    id: Optional[int] = None

    @property
    def key(self) -> tuple[str, str, str, str]:
        """What "one open alert" counts by: (rule, fleet, device, model)."""
        return (self.rule, self.fleet, self.device, self.model)

    @property
    def state(self) -> str:
        return "open" if self.cleared is None else "cleared"

    def with_clear(self, at: float) -> Alert:
        return replace(self, cleared=at)

    def to_dict(self) -> dict[str, Any]:
        return {
            "schema": ALERT_SCHEMA,
            "id": self.id,
            "state": self.state,
            "rule": self.rule,
            "kind": self.kind,
            "severity": self.severity,
            "fleet": self.fleet,
            "device": self.device,
            "model": self.model,
            "value": self.value,
            "threshold": self.threshold,
            "message": self.message,
            "opened": _time(self.opened),
            "cleared": None if self.cleared is None else _time(self.cleared),
        }

    @classmethod
    def from_dict(cls, doc: Any) -> Alert:
        """Check an alert document; raise TelemetryMessageError for any fault."""
        if not isinstance(doc, dict):
            raise TelemetryMessageError("an alert must be a JSON object")
        if doc.get("schema") != ALERT_SCHEMA:
            raise TelemetryMessageError(f"schema {doc.get('schema')!r} is not {ALERT_SCHEMA!r}")
        text: dict[str, str] = {}
        for key in ("rule", "kind", "severity", "device", "model", "message"):
            value = doc.get(key)
            if not isinstance(value, str) or len(value) > 1024:
                raise TelemetryMessageError(f"alert {key} must be a string")
            text[key] = value
        if text["severity"] not in SEVERITIES:
            raise TelemetryMessageError(f"alert severity must be one of {', '.join(SEVERITIES)}")
        numbers = {k: doc.get(k) for k in ("value", "threshold")}
        for key, value in numbers.items():
            if not (isinstance(value, (int, float)) and not isinstance(value, bool)):
                raise TelemetryMessageError(f"alert {key} must be a number")
        ident = doc.get("id")
        if ident is not None and (not isinstance(ident, int) or isinstance(ident, bool)):
            raise TelemetryMessageError("alert id must be an integer")
        state = doc.get("state")
        cleared = doc.get("cleared")
        if state not in ("open", "cleared") or (state == "open") != (cleared is None):
            raise TelemetryMessageError("alert state must be 'open' (cleared null) or 'cleared'")
        return cls(
            rule=text["rule"],
            kind=text["kind"],
            severity=text["severity"],
            fleet=check_id(doc.get("fleet"), "fleet"),  # type: ignore[arg-type]
            device=text["device"],
            model=text["model"],
            value=float(numbers["value"]),  # type: ignore[arg-type]
            threshold=float(numbers["threshold"]),  # type: ignore[arg-type]
            message=text["message"],
            opened=parse_ts(doc.get("opened")).timestamp(),
            cleared=None if cleared is None else parse_ts(cleared).timestamp(),
            id=ident,
        )


def encode_alert(alert: Alert) -> bytes:
    """The alert's message payload (compact JSON)."""
    return encode(alert.to_dict())


def parse_alert(payload: bytes) -> Alert:
    """Check an alert message payload; raise TelemetryMessageError for any fault."""
    if len(payload) > MAX_MESSAGE_BYTES:
        raise TelemetryMessageError(f"payload is {len(payload)} bytes, over {MAX_MESSAGE_BYTES}")
    try:
        doc = json.loads(bytes(payload).decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError) as e:
        raise TelemetryMessageError(f"alert is not UTF-8 JSON: {e}") from e
    return Alert.from_dict(doc)


def alert_topic(prefix: str, alert: Alert) -> str:
    return alerts_topic(prefix, alert.fleet)


def _time(epoch: float) -> str:
    return format_ts(datetime.fromtimestamp(epoch, timezone.utc))
