"""The inference service of a long-running device process: predictions, explanations and
feedback over the registry's models, with counters and observers.

Everything that serves requests (the local API, the agent) calls :class:`InferenceService`;
everything that watches them (telemetry windows, status counters) is an :class:`Observer`. An
observer's methods run on the request's thread, so they must be cheap (append, count) and must
not raise; heavy work belongs in their own threads.
"""

from __future__ import annotations

import itertools
import os
import threading
import time
from abc import ABC
from dataclasses import dataclass, field
from typing import Any, Mapping, Optional, Sequence, Union

import numpy as np

from runtime.errors import EdgeshipError, InputError
from runtime.manifest import Manifest
from runtime.model import LoadedModel, Prediction
from runtime.registry import ModelRegistry

FEEDBACK_MEMORY = 10_000
"""How many recent predictions are remembered for feedback (per process)."""


@dataclass(frozen=True)
class Observation:
    """One request as observers see it. ``feeds`` (the arrays the model ran on, after the input
    checks) and ``outputs`` are set when it ran."""

    model: str
    version: str
    latency_s: float
    rows: int
    feeds: Optional[Mapping[str, Any]] = None
    outputs: Optional[Mapping[str, np.ndarray]] = None
    predicted: Optional[np.ndarray] = None
    out_of_range: Mapping[str, int] = field(default_factory=dict)
    rejected: Optional[str] = None
    """The InputError reason when the request was refused."""
    error: Optional[str] = None
    """The error message when the model failed to run."""


@dataclass(frozen=True)
class FeedbackRecord:
    """Ground truth for an earlier prediction."""

    model: str
    version: str
    task: str
    predicted: np.ndarray
    actual: np.ndarray


@dataclass(frozen=True)
class _Remembered:
    """A served prediction, kept for feedback. The predicted values are kept as bytes (a tuple
    for an object array), not as an array: thousands of small long-lived arrays among the
    short-lived allocations of requests fragment the C heap, and an agent under steady load
    grew without end (benchmarks/soak.py)."""

    id: str
    model: str
    version: str
    task: str
    dtype: str
    values: Union[bytes, tuple[Any, ...]]

    @classmethod
    def of(
        cls, ident: str, model: str, version: str, task: str, predicted: np.ndarray
    ) -> _Remembered:
        flat = np.ascontiguousarray(predicted).reshape(-1)
        values = tuple(flat.tolist()) if flat.dtype.hasobject else flat.tobytes()
        return cls(ident, model, version, task, flat.dtype.str, values)

    def predicted(self) -> np.ndarray:
        if isinstance(self.values, bytes):
            return np.frombuffer(self.values, np.dtype(self.dtype)).copy()
        return np.array(self.values, dtype=object)


class Observer(ABC):  # noqa: B024 - every hook is optional
    """Hooks called by the service; the defaults do nothing."""

    def observe(self, observation: Observation) -> None:  # noqa: B027
        """A request was served, refused or failed."""

    def feedback(self, record: FeedbackRecord) -> None:  # noqa: B027
        """Ground truth arrived for an earlier prediction."""

    def event(self, kind: str, doc: Mapping[str, Any]) -> None:  # noqa: B027
        """Something happened to the device's models (install, self-test, rollback, error)."""


@dataclass(frozen=True)
class Served:
    """A prediction as the service returns it: the model's answer plus its id and version."""

    id: str
    model: str
    version: str
    prediction: Prediction

    def to_dict(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "model": self.model,
            "version": self.version,
            **self.prediction.to_dict(),
        }


@dataclass
class ModelCounters:
    """Counts since the process started, for one model name."""

    requests: int = 0
    rows: int = 0
    errors: int = 0
    rejected: dict[str, int] = field(default_factory=dict)
    out_of_range: int = 0
    latency_total_s: float = 0.0
    feedback: int = 0
    last_request: Optional[float] = None

    def to_dict(self) -> dict[str, Any]:
        ok = self.requests - self.errors - sum(self.rejected.values())
        return {
            "requests": self.requests,
            "rows": self.rows,
            "errors": self.errors,
            "rejected": dict(self.rejected),
            "out_of_range": self.out_of_range,
            "mean_latency_ms": (self.latency_total_s / ok * 1e3) if ok > 0 else None,
            "feedback": self.feedback,
            "last_request": self.last_request,
        }


def predicted_values(manifest: Manifest, outputs: Mapping[str, np.ndarray]) -> np.ndarray:
    """One value per row: the class label of a classifier, the first output of a regressor."""
    info = manifest.model
    if info.label_output is not None and info.label_output in outputs:
        return np.asarray(outputs[info.label_output]).reshape(-1)
    first = np.asarray(outputs[info.outputs[0].name])
    if info.task == "classification" and first.ndim == 2 and first.dtype.kind == "f":
        index: np.ndarray = first.argmax(axis=1)
        if info.labels is not None and len(info.labels) == first.shape[1]:
            return np.take(np.asarray(info.labels), index)
        return index
    return first.reshape(first.shape[0], -1)[:, 0] if first.ndim else first.reshape(-1)


def _rows(feeds: Mapping[str, Any]) -> int:
    for value in feeds.values():
        shape = getattr(value, "shape", None)
        if shape is not None:
            return int(shape[0]) if len(shape) else 1
        return len(value) if isinstance(value, (list, tuple)) else 1
    return 0


class InferenceService:
    """Serves the registry's models to many threads; counts and reports every request."""

    def __init__(self, registry: ModelRegistry, observers: Sequence[Observer] = ()) -> None:
        self.registry = registry
        self.observers = list(observers)
        self.started = time.time()
        self._counters: dict[str, ModelCounters] = {}
        self._lock = threading.Lock()
        self._ids = itertools.count(1)
        self._prefix = f"{os.getpid():x}{int(self.started):x}"
        # prediction N in slot N % FEEDBACK_MEMORY of a list allocated once; an ordered dict
        # dropping its oldest entry rebuilt its hash table over and over, fragmenting the heap
        self._recent: list[Optional[_Remembered]] = [None] * FEEDBACK_MEMORY

    def counters(self, name: str) -> ModelCounters:
        with self._lock:
            return self._counters.setdefault(name, ModelCounters())

    def model(self, name: str) -> LoadedModel:
        """The active model ``name``; raises StoreError if it is not installed."""
        return self.registry.get(name)

    def predict(self, name: str, feeds: Mapping[str, Any]) -> Served:
        """Run model ``name``; raises InputError (counted as rejected), ModelError, StoreError."""
        model = self.registry.get(name)
        version = model.manifest.version
        counters = self.counters(name)
        start = time.perf_counter()
        try:
            prediction = model.predict(feeds)
        except InputError as e:
            self._finish(
                counters,
                Observation(
                    name, version, time.perf_counter() - start, _rows(feeds), rejected=e.reason
                ),
            )
            raise
        except EdgeshipError as e:
            self._finish(
                counters,
                Observation(name, version, time.perf_counter() - start, _rows(feeds), error=str(e)),
            )
            raise
        latency = time.perf_counter() - start
        predicted = predicted_values(model.manifest, prediction.outputs)
        number = next(self._ids)
        ident = f"{self._prefix}-{number}"
        remembered = _Remembered.of(ident, name, version, model.manifest.model.task, predicted)
        with self._lock:
            self._recent[number % FEEDBACK_MEMORY] = remembered
        self._finish(
            counters,
            Observation(
                name,
                version,
                latency,
                int(predicted.shape[0]),
                prediction.inputs if prediction.inputs is not None else feeds,
                prediction.outputs,
                predicted,
                prediction.out_of_range,
            ),
        )
        return Served(ident, name, version, prediction)

    def _finish(self, counters: ModelCounters, observation: Observation) -> None:
        with self._lock:
            counters.requests += 1
            counters.last_request = time.time()
            if observation.rejected is not None:
                reasons = counters.rejected
                reasons[observation.rejected] = reasons.get(observation.rejected, 0) + 1
            elif observation.error is not None:
                counters.errors += 1
            else:
                counters.rows += observation.rows
                counters.latency_total_s += observation.latency_s
                counters.out_of_range += sum(observation.out_of_range.values())
        for observer in self.observers:
            observer.observe(observation)

    def feedback(self, name: str, prediction_id: str, actual: Any) -> FeedbackRecord:
        """Record ground truth for prediction ``prediction_id`` of model ``name``.

        ``actual`` is one value per row of that prediction (a scalar for one row). Raises
        InputError for an unknown id, another model's id, or the wrong number of values.
        """
        found = self._recall(prediction_id)
        if found is None or found.model != name:
            raise InputError(
                f"unknown prediction id {prediction_id!r} for {name} (feedback is accepted for "
                f"the last {FEEDBACK_MEMORY} predictions this process served)",
                "feedback",
            )
        version, task, predicted = found.version, found.task, found.predicted()
        values = np.atleast_1d(np.asarray(actual))
        if values.dtype == object or values.ndim != 1 or values.shape[0] != predicted.shape[0]:
            raise InputError(
                f"feedback needs {predicted.shape[0]} value(s), one per predicted row", "feedback"
            )
        if task == "regression" and values.dtype.kind not in "iuf":
            raise InputError("feedback for a regressor must be numbers", "feedback")
        record = FeedbackRecord(name, version, task, predicted, values)
        counters = self.counters(name)
        with self._lock:
            counters.feedback += 1
        for observer in self.observers:
            observer.feedback(record)
        return record

    def _recall(self, prediction_id: str) -> Optional[_Remembered]:
        """The remembered prediction ``prediction_id``, or None when it is not one of the last
        FEEDBACK_MEMORY this service served."""
        prefix, _, number = prediction_id.rpartition("-")
        if prefix != self._prefix or not (number.isascii() and number.isdigit()):
            return None
        if len(number) > 19:  # more predictions than a process serves; int() would be costly
            return None
        with self._lock:
            found = self._recent[int(number) % FEEDBACK_MEMORY]
        return found if found is not None and found.id == prediction_id else None

    def event(self, kind: str, doc: Mapping[str, Any]) -> None:
        """Pass a model event (install, self-test, rollback, error) to every observer."""
        for observer in self.observers:
            observer.event(kind, doc)

    def stats(self) -> dict[str, Any]:
        """Counters since start, by model name."""
        with self._lock:
            return {
                "started": self.started,
                "models": {name: c.to_dict() for name, c in sorted(self._counters.items())},
            }
