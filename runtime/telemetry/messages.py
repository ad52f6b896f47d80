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
from functools import lru_cache
from typing import Any, Iterable, Mapping

from runtime.errors import TelemetryMessageError

DEFAULT_PREFIX = "edgeship/v1"
MAX_MESSAGE_BYTES = 256 * 1024
"""Largest payload accepted (bytes); a device never builds a bigger one."""
MAX_DEPTH = 8
"""Deepest a value may sit: the payload object's own fields are at depth 1."""
MAX_MODELS = 64
MAX_FEATURES = 1024
MAX_STRING = 256
"""Longest name, version or digest string (characters)."""
TOPIC_CACHE = 16_384
"""Parsed topics kept (about 600 bytes each): three per device, so a fleet of 5,000 devices
parses each topic once."""

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
    if not isinstance(topic, str):
        raise TelemetryMessageError(f"topic {topic!r} is not under {prefix}/")
    return _parse_topic(topic, prefix)


@lru_cache(maxsize=TOPIC_CACHE)
def _parse_topic(topic: str, prefix: str) -> Topic:
    # every message of a device comes on the same few topics: split each once (a refused
    # topic raises and is not kept)
    if not topic.startswith(prefix + "/"):
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


def parse_message(topic: str, payload: bytes | bytearray, prefix: str = DEFAULT_PREFIX) -> Message:
    """Check a message received on ``topic``; raise TelemetryMessageError for any fault."""
    where = parse_topic(topic, prefix)
    if not isinstance(payload, (bytes, bytearray)):
        raise TelemetryMessageError("payload must be bytes")
    if len(payload) > MAX_MESSAGE_BYTES:
        raise TelemetryMessageError(f"payload is {len(payload)} bytes, over {MAX_MESSAGE_BYTES}")
    data = bytes(payload)
    nesting = _nesting(data)
    if nesting > MAX_DEPTH + 1:
        raise TelemetryMessageError(f"payload nests deeper than {MAX_DEPTH} levels")
    try:
        doc = _DECODER.decode(data.decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError) as e:
        raise TelemetryMessageError(f"payload is not UTF-8 JSON: {e}") from e
    if not isinstance(doc, dict):
        raise TelemetryMessageError("payload must be a JSON object")
    if nesting == MAX_DEPTH + 1:
        _check_deepest(doc)
    kind = where.kind
    schema = doc.get("schema")
    if schema != SCHEMAS[kind]:
        raise TelemetryMessageError(
            f"schema {schema!r} is not {SCHEMAS[kind]!r} (unknown version or wrong topic)"
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
    if kind == "telemetry":
        _check_telemetry(doc)
    elif kind == "status":
        _check_status(doc)
    else:
        _check_event(doc)
    return Message(kind, where.fleet, where.device, seq, ts, doc)


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not allowed")


_DECODER = json.JSONDecoder(parse_constant=_no_constant)
"""NaN and Infinity are not JSON; Python's parser takes them unless told not to."""


# --- nesting --------------------------------------------------------------------------------------
# A payload's depth is bounded before it is parsed, from its bytes, at C speed: walking the parsed
# document cost as much as parsing it. Outside strings, JSON text nests exactly as its brackets
# do, and a string is whatever lies between two quotes once the escapes (which only occur in
# strings, and may hide a quote) are taken out.

_ESCAPES = re.compile(rb"\\.", re.DOTALL)
_OPEN_CLOSE = bytes.maketrans(b"[{]}", b"(())")
_NOT_MARKS = bytes(sorted(set(range(256)) - set(b'"[]{}')))


def _nesting(data: bytes) -> int:
    """How many arrays and objects of JSON text ``data`` nest inside each other (1 for an object
    of scalars), counted up to ``MAX_DEPTH + 2``. Exact for JSON text; for anything else some
    number, as the parser refuses it anyway."""
    if b"\\" in data:
        data = _ESCAPES.sub(b"", data)
    # quotes and brackets only; a string without brackets leaves two adjacent quotes
    marks = data.translate(_OPEN_CLOSE, _NOT_MARKS).replace(b'""', b"")
    if b'"' in marks:  # some string holds a bracket: take the strings out first
        marks = b"".join(data.split(b'"')[::2]).translate(_OPEN_CLOSE, _NOT_MARKS)
    for depth in range(MAX_DEPTH + 2):
        if not marks:
            return depth
        inner = marks.replace(b"()", b"")  # the innermost arrays and objects: one level
        if len(inner) == len(marks):
            return depth  # unbalanced: not JSON
        marks = inner
    return MAX_DEPTH + 2


def _check_deepest(doc: dict[str, Any]) -> None:
    """For a payload whose brackets nest ``MAX_DEPTH + 1`` deep: the innermost arrays and
    objects are at depth ``MAX_DEPTH``, so they must be empty."""
    level: list[Any] = [doc]
    for _ in range(MAX_DEPTH):
        level = [item for value in level
                 for item in (value.values() if isinstance(value, dict) else value)
                 if isinstance(item, (dict, list))]  # fmt: skip
    if any(level):
        raise TelemetryMessageError(f"payload nests deeper than {MAX_DEPTH} levels")


# --- fields ---------------------------------------------------------------------------------------
# Straight-line checks: these run for every message the monitor receives.

_MAX_EXACT_INT = 2**53
_isfinite = math.isfinite


def _wrong(key: str, what: str) -> TelemetryMessageError:
    return TelemetryMessageError(f"{key} must be {what}")


def _is_count(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def _is_string(value: Any) -> bool:
    return isinstance(value, str) and len(value) <= MAX_STRING


def _is_number(value: Any) -> bool:
    if isinstance(value, float):
        return _isfinite(value)
    # an int too large for a float is refused: math.isfinite would raise OverflowError
    return (isinstance(value, int) and not isinstance(value, bool)
            and -_MAX_EXACT_INT <= value <= _MAX_EXACT_INT)  # fmt: skip


def _numbers(values: Iterable[Any]) -> bool:
    """Whether each of ``values`` is a number or None."""
    for value in values:
        if isinstance(value, float):
            if not _isfinite(value):
                return False
        elif value is not None and not _is_number(value):
            return False
    return True


def _check_status(doc: Mapping[str, Any]) -> None:
    state = doc.get("state")
    if state not in ("online", "offline"):
        raise _wrong("state", "'online' or 'offline'")
    if state == "offline":
        return
    if not _is_string(doc.get("runtime_version")):
        raise _wrong("runtime_version", "a string")
    models = doc.get("models")
    if not isinstance(models, list) or len(models) > MAX_MODELS:
        raise _wrong("models", f"a list of at most {MAX_MODELS} models")
    for model in models:
        if not isinstance(model, dict):
            raise TelemetryMessageError("models[] entries must be objects")
        for key in ("name", "version"):
            if not _is_string(model.get(key)):
                raise _wrong(key, "a string")
        if not _is_count(model.get("sequence")):
            raise _wrong("sequence", "a non-negative integer")
        if not _is_string(model.get("digest")):
            raise _wrong("digest", "a string")


def _check_telemetry(doc: Mapping[str, Any]) -> None:
    window_s: Any = doc.get("window_s")
    if not _is_number(window_s) or window_s < 0:
        raise _wrong("window_s", "a non-negative number")
    models = doc.get("models")
    if not isinstance(models, dict) or len(models) > MAX_MODELS:
        raise _wrong("models", f"an object of at most {MAX_MODELS} models")
    for name, model in models.items():
        if not isinstance(model, dict):
            raise TelemetryMessageError(f"models.{name} must be an object")
        _check_window(model)
    system = doc.get("system")
    if system is not None and not isinstance(system, dict):
        raise _wrong("system", "an object")
    if system:
        for key in ("rss_mb", "cpu_percent"):
            value = system.get(key)
            if value is not None and not _is_number(value):
                raise _wrong(key, "a number")


def _check_window(model: Mapping[str, Any]) -> None:
    """One model's entry of a telemetry message."""
    if not _is_string(model.get("version")):
        raise _wrong("version", "a string")
    for key in ("requests", "errors", "rejected"):
        if not _is_count(model.get(key)):
            raise _wrong(key, "a non-negative integer")
    latency = model.get("latency_ms")
    if not isinstance(latency, dict) or not _numbers(
        (latency.get("p50"), latency.get("p95"), latency.get("p99"), latency.get("max"))
    ):
        raise _wrong("latency_ms", "an object of numbers p50/p95/p99/max")
    _optional_object(model, "predictions")
    drift = model.get("drift")
    if drift is not None and not _is_drift(drift):
        raise _wrong("drift", "an object of feature → scores")
    _optional_object(model, "feedback")


def _optional_object(doc: Mapping[str, Any], key: str) -> None:
    value = doc.get(key)
    if value is not None and not isinstance(value, dict):
        raise _wrong(key, "an object")


def _is_drift(value: Any) -> bool:
    # feature and metric names are keys of a JSON object: strings
    if not isinstance(value, dict) or len(value) > MAX_FEATURES:
        return False
    for scores in value.values():
        if not isinstance(scores, dict) or not _numbers(scores.values()):
            return False
    return True


def _check_event(doc: Mapping[str, Any]) -> None:
    event = doc.get("event")
    if not isinstance(event, str) or event not in EVENT_KINDS:
        raise _wrong("event", f"one of {', '.join(sorted(EVENT_KINDS))}")
    model = doc.get("model")
    if model is not None and not _is_string(model):
        raise _wrong("model", "a string")
    _optional_object(doc, "detail")
