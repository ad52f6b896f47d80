"""One model version's aggregates over one telemetry window: requests in, a report out.

A request is counted on its own thread (the collector's hot path and :meth:`ModelWindow.served`),
so the counting does the least that keeps every count exact and lets go of the request's arrays
at once (holding them for later costs a request more than counting it now): a few integer
updates; the latency and the predicted labels appended to buffers that are folded into a
:class:`~runtime.telemetry.sampling.LogHistogram` and the class counts every ``FOLD`` requests;
and a copy of the inputs only for the requests the drift sample picks. Values needed whole are
bounded by :class:`WindowLimits` and kept as uniform samples past the bound.
:meth:`ModelWindow.report` turns it into the per-model part of a telemetry message
(docs/telemetry.md), off the request path.
"""

from __future__ import annotations

import random
from array import array
from collections import Counter
from dataclasses import dataclass
from typing import Any, Mapping, Optional, Sequence

import numpy as np

from runtime.service import FeedbackRecord, Observation
from runtime.telemetry.drift import FeatureBaseline, drift_scores
from runtime.telemetry.sampling import LogHistogram, Reservoir

QUANTILES = (5, 25, 50, 75, 95)
OTHER = "_other"
"""Where classes, rejection reasons or features past their bound are counted."""
FOLD = 4_096
"""Requests whose latencies and labels are buffered before they are folded into the histogram
and the class counts."""
MAX_LABELS = 65_536
"""Labels buffered at most (big batches fill the buffer before ``FOLD`` requests)."""


@dataclass(frozen=True)
class WindowLimits:
    """What one model's window may hold; counts are exact whatever these say."""

    drift_requests: int = 1_024
    """Requests whose inputs are kept (copied) for drift."""
    drift_rows: int = 8_192
    """Rows drift is computed over when the window closes (drawn uniformly from those kept)."""
    prediction_samples: int = 4_096
    """Regression outputs (one array per request) kept for quantiles."""
    classes: int = 256
    """Distinct predicted classes counted; the rest count as ``_other``."""
    keys: int = 1_024
    """Distinct rejection reasons or out-of-range features counted."""

    def __post_init__(self) -> None:
        values = (
            self.drift_requests,
            self.drift_rows,
            self.prediction_samples,
            self.classes,
            self.keys,
        )
        if min(values) < 1:
            raise ValueError("window limits must be positive")


def _bump(counts: dict[Any, int], key: Any, by: int, cap: int) -> None:
    if key in counts or len(counts) < cap:
        counts[key] = counts.get(key, 0) + by
    else:
        counts[OTHER] = counts.get(OTHER, 0) + by


def _copy(feeds: Mapping[str, Any]) -> dict[str, np.ndarray]:
    return {
        name: value.copy() if isinstance(value, np.ndarray) else np.array(value)
        for name, value in feeds.items()
    }


class ModelWindow:
    """Aggregates of one model version. Not thread-safe: the collector's lock guards it."""

    __slots__ = (
        "abs_error",
        "buffer",
        "classes",
        "correct",
        "errors",
        "feedback_rows",
        "feedback_task",
        "inputs",
        "labels",
        "last_error",
        "latencies",
        "limits",
        "out_of_range",
        "rejected",
        "rejected_rows",
        "requests",
        "rows",
        "squared_error",
        "value_rows",
        "values",
        "version",
    )

    def __init__(
        self, version: str, limits: WindowLimits, rng: random.Random, expected: int = 0
    ) -> None:
        """``expected`` served requests in this window (the last window's count) lets the
        samples thin the stream to about twice their size before sampling it."""
        self.version = version
        self.limits = limits
        self.requests = self.rows = self.errors = 0
        self.last_error: Optional[str] = None
        self.rejected: dict[str, int] = {}
        self.rejected_rows: dict[str, int] = {}
        self.out_of_range: dict[str, int] = {}
        self.latencies = LogHistogram()
        self.buffer = array("d")
        self.classes: dict[Any, int] = {}
        self.labels: list[Any] = []
        """Predicted labels not counted yet (counted with the latencies, every ``FOLD``)."""
        thin = max(1, expected // (2 * limits.prediction_samples))
        self.values: Reservoir[np.ndarray] = Reservoir(limits.prediction_samples, rng, thin)
        self.value_rows = 0
        thin = max(1, expected // (2 * limits.drift_requests))
        self.inputs: Reservoir[dict[str, np.ndarray]] = Reservoir(limits.drift_requests, rng, thin)
        self.feedback_task: Optional[str] = None
        self.feedback_rows = self.correct = 0
        self.abs_error = self.squared_error = 0.0

    def served(self, o: Observation) -> None:
        """Count the parts of a served request past the counters (the collector's hot path does
        those inline): out-of-range values, the prediction, and the drift sample."""
        if o.out_of_range:
            for feature, count in o.out_of_range.items():
                _bump(self.out_of_range, feature, count, self.limits.keys)
        predicted = o.predicted
        if predicted is not None:
            if predicted.dtype.kind in "fc":
                self.value_rows += predicted.size
                self.values.offer(predicted)
            else:
                labels = self.labels
                labels.extend(predicted.tolist())
                if len(labels) >= MAX_LABELS:
                    self.fold()
        feeds = o.feeds
        if feeds is not None:
            sample = self.inputs
            sample.seen += 1
            if sample.seen >= sample.next:
                sample.candidate(lambda: _copy(feeds))

    def refused_or_failed(self, o: Observation) -> None:
        """Count a request the model refused or failed on."""
        self.requests += 1
        if o.rejected is not None:
            _bump(self.rejected, o.rejected, 1, self.limits.keys)
            _bump(self.rejected_rows, o.rejected, o.rows, self.limits.keys)
        else:
            self.errors += 1
            self.last_error = o.error

    def _cap_classes(self) -> None:
        """Past the bound, the newest classes are counted as ``_other``."""
        keep = self.limits.classes - (0 if OTHER in self.classes else 1)
        for label in list(self.classes)[keep:]:
            if label != OTHER:
                self.classes[OTHER] = self.classes.get(OTHER, 0) + self.classes.pop(label)

    def fold(self) -> None:
        """Move the buffered latencies into the histogram and count the buffered labels."""
        if self.buffer:
            self.latencies.add(np.frombuffer(self.buffer, dtype=np.float64))
            self.buffer = array("d")
        if self.labels:
            classes = self.classes
            for label, count in Counter(self.labels).items():
                classes[label] = classes.get(label, 0) + count
            self.labels = []
            if len(classes) > self.limits.classes:
                self._cap_classes()

    def add_feedback(self, record: FeedbackRecord) -> None:
        """Count ground truth against the prediction it belongs to."""
        predicted = np.asarray(record.predicted).reshape(-1)
        actual = np.asarray(record.actual).reshape(-1)
        rows = min(predicted.size, actual.size)
        predicted, actual = predicted[:rows], actual[:rows]
        if record.task == "regression":
            diff = actual.astype(np.float64) - predicted.astype(np.float64)
            self.abs_error += float(np.abs(diff).sum())
            self.squared_error += float((diff * diff).sum())
        elif predicted.dtype.kind in "biuf" and actual.dtype.kind in "biuf":
            self.correct += int(np.sum(predicted == actual))
        else:
            self.correct += int(np.sum(predicted.astype(str) == actual.astype(str)))
        self.feedback_task = record.task
        self.feedback_rows += rows

    # --- the report ---------------------------------------------------------------------------

    def report(
        self, found: Sequence[FeatureBaseline], rng: random.Random, sample_inputs: int = 0
    ) -> dict[str, Any]:
        """The per-model document of docs/telemetry.md. ``sample_inputs`` raw rows per input are
        included only when asked for (0: none)."""
        doc: dict[str, Any] = {
            "version": self.version,
            "requests": self.requests,
            "rows": self.rows,
            "errors": self.errors,
            "rejected": sum(self.rejected.values()),
            "rejected_reasons": dict(sorted(self.rejected.items())),
            "out_of_range": dict(sorted(self.out_of_range.items())),
            "missing": {
                "requests": self.rejected.get("non-finite", 0),
                "rows": self.rejected_rows.get("non-finite", 0),
            },
            "latency_ms": self._latency(),
            "predictions": self._predictions(),
        }
        tables = _tables(self.inputs.items, self.limits.drift_rows, rng)
        scores = drift_scores(found, tables)
        doc["drift"] = {feature: score.to_dict() for feature, score in scores.items()}
        doc["drift_rows"] = max((score.n for score in scores.values()), default=0)
        if self.feedback_rows:
            doc["feedback"] = self._feedback()
        if sample_inputs and tables:
            doc["samples"] = {
                name: t[:sample_inputs].tolist() for name, t in sorted(tables.items())
            }
        return doc

    def _latency(self) -> dict[str, Optional[float]]:
        self.fold()
        histogram = self.latencies
        if not histogram.count:
            return {"p50": None, "p95": None, "p99": None, "max": None}
        doc: dict[str, Optional[float]] = {
            f"p{q}": round(histogram.percentile(q) * 1e3, 4) for q in (50, 95, 99)
        }
        doc["max"] = round(histogram.max * 1e3, 4)
        return doc

    def _predictions(self) -> dict[str, Any]:
        self.fold()
        if self.classes:
            classes = sorted((str(label), n) for label, n in self.classes.items())
            return {"count": sum(self.classes.values()), "classes": dict(classes)}
        if not self.values.items:
            return {"count": 0}
        values = np.concatenate([v.reshape(-1) for v in self.values.items]).astype(np.float64)
        finite = values[np.isfinite(values)]
        doc: dict[str, Any] = {
            "count": self.value_rows,
            "sampled": int(values.size),
            "non_finite": int(values.size - finite.size),
        }
        if finite.size:
            qs = np.percentile(finite, QUANTILES)
            doc.update(
                mean=float(finite.mean()),
                min=float(finite.min()),
                max=float(finite.max()),
                quantiles={f"p{q}": float(v) for q, v in zip(QUANTILES, qs)},
            )
        return doc

    def _feedback(self) -> dict[str, Any]:
        n = self.feedback_rows
        if self.feedback_task == "regression":
            return {"count": n, "mae": self.abs_error / n, "rmse": (self.squared_error / n) ** 0.5}
        return {"count": n, "accuracy": self.correct / n}


def _tables(
    sampled: Sequence[Mapping[str, np.ndarray]], max_rows: int, rng: random.Random
) -> dict[str, np.ndarray]:
    """The sampled requests' inputs as one float64 table (rows by columns) per input name.
    Inputs that are not 1-D or 2-D numbers, or change width between requests, are left out."""
    parts: dict[str, list[np.ndarray]] = {}
    for feeds in sampled:
        for name, value in feeds.items():
            if value.dtype.kind not in "biuf" or value.ndim not in (1, 2):
                continue
            table = value.reshape(value.shape[0], -1) if value.ndim == 2 else value.reshape(-1, 1)
            parts.setdefault(name, []).append(table)
    tables = {}
    for name, arrays in parts.items():
        width = arrays[0].shape[1]
        table = np.concatenate([a for a in arrays if a.shape[1] == width]).astype(np.float64)
        if table.shape[0] > max_rows:
            table = table[sorted(rng.sample(range(table.shape[0]), max_rows))]
        tables[name] = table
    return tables
