"""Telemetry messages: topics and versioned JSON payloads (design.md §5, docs/telemetry.md).

One implementation for both sides: the device builds messages with :func:`encode`, the fleet
monitor checks every message it receives with :func:`parse_message`. Parsing is strict and
bounded: a payload over the size limit, not UTF-8 JSON, of an unknown schema version, with wrong
types, or claiming another device or fleet than its topic names is a
:class:`TelemetryMessageError`, never any other exception.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any, Callable, Mapping

from runtime.errors import TelemetryMessageError

DEFAULT_PREFIX = "edgeship/v1"
MAX_MESSAGE_BYTES = 256 * 1024
"""Largest payload accepted (bytes); a device never builds a bigger one."""
MAX_DEPTH = 8
MAX_MODELS = 64
MAX_FEATURES = 1024

ID_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
"""Fleet and device ids: safe in a topic level (no '/', '+', '#') and in a file name."""

SCHEMAS = {
    "status": "edgeship.status/v1",
    "telemetry": "edgeship.telemetry/v1",
    "events": "edgeship.event/v1",
}
"""Device topic kind → the schema its payloads carry."""
ALERT_SCHEMA = "edgeship.alert/v1"
DEVICE_KINDS = tuple(SCHEMAS)
EVENT_KINDS = frozenset(
    {"install", "install-failed", "selftest", "rollback", "error", "deploy", "agent-start",
     "agent-stop", "spool-dropped"}
)  # fmt: skip


@dataclass(frozen=True)
class Topic:
    """A parsed device topic ``PREFIX/FLEET/DEVICE/KIND``."""

    fleet: str
    device: str
    kind: str


@dataclass(frozen=True)
class Message:
    """A checked message: the envelope fields plus the whole document."""

    kind: str
    fleet: str
    device: str
    seq: int
    ts: datetime
    doc: dict[str, Any]


def check_id(value: str, what: str) -> str:
    """Return ``value`` if it is a valid fleet or device id; raise TelemetryMessageError."""
    if not isinstance(value, str) or not ID_RE.match(value):
        raise TelemetryMessageError(
            f"{what} {value!r} is not a valid id (letters, digits, '.', '_', '-'; at most 64)"
        )
    return value


def device_topic(prefix: str, fleet: str, device: str, kind: str) -> str:
    if kind not in SCHEMAS and kind != "deploy":
        raise TelemetryMessageError(f"unknown topic kind {kind!r}")
    return f"{prefix}/{check_id(fleet, 'fleet')}/{check_id(device, 'device')}/{kind}"


def alerts_topic(prefix: str, fleet: str) -> str:
    return f"{prefix}/{check_id(fleet, 'fleet')}/alerts"


def parse_topic(topic: str, prefix: str = DEFAULT_PREFIX) -> Topic:
    """Split a device topic; raise TelemetryMessageError for anything else."""
    if not isinstance(topic, str) or not topic.startswith(prefix + "/"):
        raise TelemetryMessageError(f"topic {topic!r} is not under {prefix}/")
    parts = topic[len(prefix) + 1 :].split("/")
    if len(parts) != 3 or parts[2] not in SCHEMAS:
        raise TelemetryMessageError(f"unexpected topic {topic!r}")
    return Topic(check_id(parts[0], "fleet"), check_id(parts[1], "device"), parts[2])


def format_ts(ts: datetime) -> str:
    return ts.astimezone(timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def parse_ts(value: Any) -> datetime:
    if not isinstance(value, str) or len(value) > 40:
        raise TelemetryMessageError("ts must be an ISO 8601 UTC time string")
    try:
        ts = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError as e:
        raise TelemetryMessageError(f"ts {value!r} is not an ISO 8601 time") from e
    if ts.tzinfo is None:
        raise TelemetryMessageError(f"ts {value!r} has no time zone")
    return ts.astimezone(timezone.utc)


def encode(doc: Mapping[str, Any]) -> bytes:
    """Compact UTF-8 JSON for ``doc``; raise TelemetryMessageError if it is over the limit."""
    data = json.dumps(doc, separators=(",", ":"), sort_keys=True, allow_nan=False).encode("utf-8")
    if len(data) > MAX_MESSAGE_BYTES:
        raise TelemetryMessageError(f"message is {len(data)} bytes, over {MAX_MESSAGE_BYTES}")
    return data


def envelope(kind: str, fleet: str, device: str, seq: int, ts: datetime) -> dict[str, Any]:
    """The fields every device message starts with."""
    return {"schema": SCHEMAS[kind], "fleet": fleet, "device": device, "seq": seq,
            "ts": format_ts(ts)}  # fmt: skip


# --- parsing --------------------------------------------------------------------------------------


def parse_message(topic: str, payload: bytes, prefix: str = DEFAULT_PREFIX) -> Message:
    """Check a message received on ``topic``; raise TelemetryMessageError for any fault."""
    where = parse_topic(topic, prefix)
    if not isinstance(payload, (bytes, bytearray)):
        raise TelemetryMessageError("payload must be bytes")
    if len(payload) > MAX_MESSAGE_BYTES:
        raise TelemetryMessageError(f"payload is {len(payload)} bytes, over {MAX_MESSAGE_BYTES}")
    try:
        doc = json.loads(bytes(payload).decode("utf-8"), parse_constant=_no_constant)
    except (UnicodeDecodeError, ValueError, RecursionError) as e:
        raise TelemetryMessageError(f"payload is not UTF-8 JSON: {e}") from e
    if not isinstance(doc, dict):
        raise TelemetryMessageError("payload must be a JSON object")
    _check_depth(doc, 0)
    schema = doc.get("schema")
    if schema != SCHEMAS[where.kind]:
        raise TelemetryMessageError(
            f"schema {schema!r} is not {SCHEMAS[where.kind]!r} (unknown version or wrong topic)"
        )
    if doc.get("fleet") != where.fleet or doc.get("device") != where.device:
        raise TelemetryMessageError(
            f"payload claims {doc.get('fleet')!r}/{doc.get('device')!r} on the topic of "
            f"{where.fleet}/{where.device}"
        )
    seq = doc.get("seq")
    if not isinstance(seq, int) or isinstance(seq, bool) or seq < 0:
        raise TelemetryMessageError("seq must be a non-negative integer")
    ts = parse_ts(doc.get("ts"))
    _CHECKS[where.kind](doc)
    return Message(where.kind, where.fleet, where.device, seq, ts, doc)


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not allowed")


def _check_depth(value: Any, depth: int) -> None:
    if depth > MAX_DEPTH:
        raise TelemetryMessageError(f"payload nests deeper than {MAX_DEPTH} levels")
    if isinstance(value, dict):
        for item in value.values():
            _check_depth(item, depth + 1)
    elif isinstance(value, list):
        for item in value:
            _check_depth(item, depth + 1)


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    # An int too large for a float is refused here: math.isfinite would raise OverflowError.
    if _is_int(value):
        return bool(abs(value) <= 2**53)
    return isinstance(value, float) and math.isfinite(value)


def _field(doc: Mapping[str, Any], key: str, check: Callable[[Any], bool], what: str,
           optional: bool = False) -> Any:  # fmt: skip
    value = doc.get(key)
    if value is None and optional:
        return None
    if not check(value):
        raise TelemetryMessageError(f"{key} must be {what}")
    return value


def _count(value: Any) -> bool:
    return _is_int(value) and value >= 0


def _string(value: Any) -> bool:
    return isinstance(value, str) and len(value) <= 256


def _check_status(doc: Mapping[str, Any]) -> None:
    state = _field(doc, "state", lambda v: v in ("online", "offline"), "'online' or 'offline'")
    if state == "offline":
        return
    _field(doc, "runtime_version", _string, "a string")
    models = _field(doc, "models", lambda v: isinstance(v, list) and len(v) <= MAX_MODELS,
                    f"a list of at most {MAX_MODELS} models")  # fmt: skip
    for model in models:
        if not isinstance(model, dict):
            raise TelemetryMessageError("models[] entries must be objects")
        _field(model, "name", _string, "a string")
        _field(model, "version", _string, "a string")
        _field(model, "sequence", _count, "a non-negative integer")
        _field(model, "digest", _string, "a string")


def _check_latency(value: Any) -> bool:
    return isinstance(value, dict) and all(
        value.get(k) is None or _is_number(value.get(k)) for k in ("p50", "p95", "p99", "max")
    )


def _check_drift(value: Any) -> bool:
    if not isinstance(value, dict) or len(value) > MAX_FEATURES:
        return False
    return all(
        isinstance(scores, dict)
        and all(isinstance(k, str) and (v is None or _is_number(v)) for k, v in scores.items())
        for scores in value.values()
    )


def _check_telemetry(doc: Mapping[str, Any]) -> None:
    _field(doc, "window_s", lambda v: _is_number(v) and v >= 0, "a non-negative number")
    models = _field(doc, "models", lambda v: isinstance(v, dict) and len(v) <= MAX_MODELS,
                    f"an object of at most {MAX_MODELS} models")  # fmt: skip
    for name, model in models.items():
        if not isinstance(model, dict):
            raise TelemetryMessageError(f"models.{name} must be an object")
        _field(model, "version", _string, "a string")
        for key in ("requests", "errors", "rejected"):
            _field(model, key, _count, "a non-negative integer")
        _field(model, "latency_ms", _check_latency, "an object of numbers p50/p95/p99/max")
        _field(model, "predictions", lambda v: isinstance(v, dict), "an object", optional=True)
        _field(model, "drift", _check_drift, "an object of feature → scores", optional=True)
        _field(model, "feedback", lambda v: isinstance(v, dict), "an object", optional=True)
    system = _field(doc, "system", lambda v: isinstance(v, dict), "an object", optional=True)
    if system:
        for key in ("rss_mb", "cpu_percent"):
            _field(system, key, _is_number, "a number", optional=True)


def _check_event(doc: Mapping[str, Any]) -> None:
    kinds = f"one of {', '.join(sorted(EVENT_KINDS))}"
    _field(doc, "event", lambda v: isinstance(v, str) and v in EVENT_KINDS, kinds)
    _field(doc, "model", _string, "a string", optional=True)
    _field(doc, "detail", lambda v: isinstance(v, dict), "an object", optional=True)


_CHECKS: dict[str, Callable[[Mapping[str, Any]], None]] = {
    "status": _check_status,
    "telemetry": _check_telemetry,
    "events": _check_event,
}
