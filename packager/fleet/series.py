"""Telemetry time series: one :class:`Window` per (device, model) per telemetry message.

A stored window keeps the few numbers the fleet status, the alert rules and charts read often
(counts, latency, worst drift, feedback) in columns, next to the whole message as it arrived
(``raw``), so rules can use any drift metric a device reports without a schema change and nothing
the device said is lost.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from functools import partial
from itertools import chain
from operator import is_not
from typing import Any, Optional

from runtime.telemetry.messages import Message

PERCENTILES = ("p50", "p95", "p99", "max")
COLUMNS = (
    "fleet", "device", "model", "seq", "ts", "received", "version", "requests", "errors",
    "rejected", "p50", "p95", "p99", "max_ms", "drift_worst", "feedback_count", "accuracy", "mae",
    "raw",
)  # fmt: skip
"""The stored columns of a window, in :func:`rows` order."""


@dataclass(frozen=True)
class Window:
    """One model's numbers from one telemetry message, as stored."""

    fleet: str
    device: str
    model: str
    seq: int
    ts: float
    """Device time the window was sent (epoch seconds)."""
    received: float
    """Monitor time it arrived (epoch seconds)."""
    version: str
    requests: int
    errors: int
    rejected: int
    latency_ms: dict[str, Optional[float]]
    doc: dict[str, Any]
    """The model's whole entry of the telemetry message."""
    system: dict[str, Any]
    window_s: float

    @property
    def key(self) -> tuple[str, str, str]:
        return (self.fleet, self.device, self.model)

    @property
    def error_rate(self) -> Optional[float]:
        """Errors as a fraction of requests; None for a window without requests."""
        return self.errors / self.requests if self.requests else None

    @property
    def rejected_rate(self) -> Optional[float]:
        """Rejected inputs as a fraction of requests; None for a window without requests."""
        return self.rejected / self.requests if self.requests else None

    def worst_drift(self, metric: Optional[str] = None) -> Optional[tuple[str, str, float]]:
        """The highest drift score as ``(feature, metric, score)`` (of ``metric`` when given)."""
        return worst_drift(self.doc, metric)

    def feedback(self, measure: str) -> tuple[int, Optional[float]]:
        """``(count, value)`` of the window's feedback ``measure`` (``accuracy`` or ``mae``)."""
        return feedback(self.doc, measure)

    @classmethod
    def from_row(cls, row: dict[str, Any]) -> Window:
        message = json.loads(row["raw"])
        return cls(
            fleet=row["fleet"],
            device=row["device"],
            model=row["model"],
            seq=row["seq"],
            ts=row["ts"],
            received=row["received"],
            version=row["version"],
            requests=row["requests"],
            errors=row["errors"],
            rejected=row["rejected"],
            latency_ms={p: row["max_ms" if p == "max" else p] for p in PERCENTILES},
            doc=message["models"][row["model"]],
            system=message.get("system") or {},
            window_s=float(message["window_s"]),
        )


def worst_drift(
    doc: dict[str, Any], metric: Optional[str] = None
) -> Optional[tuple[str, str, float]]:
    best: Optional[tuple[str, str, float]] = None
    for feature, scores in (doc.get("drift") or {}).items():
        for name, score in scores.items():
            if score is None or (metric is not None and name != metric):
                continue
            if best is None or score > best[2]:
                best = (feature, name, float(score))
    return best


def feedback(doc: dict[str, Any], measure: str) -> tuple[int, Optional[float]]:
    given = doc.get("feedback") or {}
    return _feedback_count(given), _measure(given.get(measure))


def _feedback_columns(given: dict[str, Any]) -> tuple[int, Optional[float], Optional[float]]:
    return _feedback_count(given), _measure(given.get("accuracy")), _measure(given.get("mae"))


def _feedback_count(given: dict[str, Any]) -> int:
    count = given.get("count")
    return count if isinstance(count, int) and not isinstance(count, bool) else 0


def _measure(value: Any) -> Optional[float]:
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    return None


_not_none = partial(is_not, None)


def _worst(drift: dict[str, dict[str, Any]]) -> Optional[float]:
    """The highest score of a checked drift object (scores are numbers or None)."""
    scores = chain.from_iterable(map(dict.values, drift.values()))
    return max(filter(_not_none, scores), default=None)


def rows(message: Message, received: float, raw: str) -> list[tuple[Any, ...]]:
    """The stored rows (:data:`COLUMNS`) of a checked telemetry message, one per model."""
    found = []
    ts = message.ts.timestamp()
    for name, doc in message.doc["models"].items():
        latency = doc["latency_ms"]
        drift = doc.get("drift")
        worst = _worst(drift) if drift else None
        given = doc.get("feedback")
        count, accuracy, mae = _feedback_columns(given) if given else (0, None, None)
        found.append((
            message.fleet, message.device, name, message.seq, ts, received, doc["version"],
            doc["requests"], doc["errors"], doc["rejected"], latency.get("p50"),
            latency.get("p95"), latency.get("p99"), latency.get("max"), worst, count, accuracy,
            mae, raw,
        ))  # fmt: skip
    return found


def windows(message: Message, received: float, raw: str = "") -> list[Window]:
    """The windows of a checked telemetry message, as the store would give them back."""
    text = raw or json.dumps(message.doc)
    return [Window.from_row(dict(zip(COLUMNS, row))) for row in rows(message, received, text)]
