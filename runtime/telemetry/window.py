"""Telemetry windows: what every model did between two window closes (docs/telemetry.md).

The request side does one thing: :meth:`WindowCollector.observe` appends the observation to a
queue (a ``deque`` append, atomic and lock-free), on the request's thread. The window thread
takes the queue over every tick (:meth:`WindowCollector.drain`) and counts whole batches at once
into per-model :class:`~runtime.telemetry.aggregate.ModelWindow` s; :meth:`WindowCollector.close`
drains, swaps the open window for an empty one and reports it. All of it runs under one lock,
so each observation is counted in exactly one window: the one open when it is drained. A request
that finds ``WindowLimits.queue`` observations waiting drains them itself, so a stalled window
thread cannot make memory grow.

Inputs are read when the observation is drained (within one tick of the request, usually a
quarter second): an in-process caller that reuses its input buffers sees drift computed on
whatever the buffer held then.
"""

from __future__ import annotations

import logging
import random
import threading
import time
from collections import deque
from dataclasses import dataclass
from operator import attrgetter
from typing import Any, Callable, Iterable, Optional, Sequence

from runtime.service import FeedbackRecord, Observation
from runtime.telemetry.aggregate import ModelWindow, WindowLimits
from runtime.telemetry.drift import FeatureBaseline

__all__ = ["ClosedWindow", "ModelReport", "WindowCollector", "WindowLimits"]

log = logging.getLogger(__name__)

MAX_SAMPLE_INPUTS = 100
"""Most raw input rows per model and window that telemetry may carry."""
_model = attrgetter("model")
_version = attrgetter("version")


@dataclass(frozen=True)
class ModelReport:
    """A closed window of one model version: its telemetry document and its errors (for events)."""

    name: str
    doc: dict[str, Any]
    errors: int
    last_error: Optional[str]


@dataclass(frozen=True)
class ClosedWindow:
    """A closed window. Each layer holds one report per model name; a name served in two
    versions within the window (an install in between) has its second version in a second layer.
    """

    window_s: float
    layers: tuple[tuple[ModelReport, ...], ...]

    @property
    def requests(self) -> int:
        return sum(r.doc["requests"] for layer in self.layers for r in layer)


Baselines = Callable[[str, str], Sequence[FeatureBaseline]]
"""(model name, version) → its drift baselines (empty when unknown)."""


class WindowCollector:
    """Collects observations into the open window; :meth:`close` ends it and starts the next.

    ``sample_inputs`` raw input rows per model and window are put into the report (``samples``):
    0, the default, keeps raw inputs on the device.
    """

    def __init__(
        self,
        limits: Optional[WindowLimits] = None,
        sample_inputs: int = 0,
        clock: Callable[[], float] = time.monotonic,
        seed: Optional[int] = None,
    ) -> None:
        if not 0 <= sample_inputs <= MAX_SAMPLE_INPUTS:
            raise ValueError(f"sample_inputs must be between 0 and {MAX_SAMPLE_INPUTS} rows")
        self.limits = limits or WindowLimits()
        self.sample_inputs = sample_inputs
        self._clock = clock
        self._queue: deque[Observation] = deque()
        self._lock = threading.Lock()
        self._random = random.Random(seed)
        self._models: dict[tuple[str, str], ModelWindow] = {}
        self._opened = clock()
        self._faults = 0

    # --- request side ----------------------------------------------------------------------------

    def observe(self, observation: Observation) -> None:
        """Queue one request (served, refused or failed) for counting. Never raises."""
        self._queue.append(observation)
        if len(self._queue) >= self.limits.queue:
            self.drain()

    def feedback(self, record: FeedbackRecord) -> None:
        """Count ground truth for an earlier prediction in the open window. Never raises."""
        try:
            with self._lock:
                self._window(record.model, record.version).add_feedback(record)
        except Exception:  # noqa: BLE001 - an observer must never fail a request
            self._fault("feedback")

    # --- window thread ---------------------------------------------------------------------------

    def drain(self) -> int:
        """Count everything queued so far into the open window; returns how many."""
        with self._lock:
            return self._drain()

    def _drain(self) -> int:
        queue = self._queue
        batch = [queue.popleft() for _ in range(len(queue))]
        if not batch:
            return 0
        try:
            names, versions = set(map(_model, batch)), set(map(_version, batch))
            if len(names) == 1 and len(versions) == 1:
                self._window(names.pop(), versions.pop()).add(batch)
            else:
                groups: dict[tuple[str, str], list[Observation]] = {}
                for o in batch:
                    groups.setdefault((o.model, o.version), []).append(o)
                for (name, version), group in groups.items():
                    self._window(name, version).add(group)
        except Exception:  # noqa: BLE001 - a malformed observation must not stop telemetry
            self._fault("counting")
        return len(batch)

    def _window(self, name: str, version: str) -> ModelWindow:
        window = self._models.get((name, version))
        if window is None:
            window = self._models[(name, version)] = ModelWindow(version, self.limits, self._random)
        return window

    def _fault(self, where: str) -> None:
        self._faults += 1
        if self._faults in (1, 10, 100) or self._faults % 10_000 == 0:
            log.exception(
                "telemetry %s failed (%d time(s)); requests were not affected", where, self._faults
            )

    def close(self, baselines: Baselines, idle: Iterable[tuple[str, str]] = ()) -> ClosedWindow:
        """End the open window and report it. ``idle`` lists (name, version) of models to report
        even when nothing happened to them (the loaded ones)."""
        with self._lock:
            self._drain()
            models, self._models = self._models, {}
            opened, self._opened = self._opened, self._clock()
            window_s = max(0.0, self._opened - opened)
        for name, version in idle:
            if all(n != name for n, _ in models):
                models[(name, version)] = ModelWindow(version, self.limits, self._random)
        layers: list[list[ModelReport]] = []
        for (name, version), w in models.items():
            doc = w.report(baselines(name, version), self._random, self.sample_inputs)
            report = ModelReport(name, doc, w.errors, w.last_error)
            layer = next((lay for lay in layers if all(r.name != name for r in lay)), None)
            if layer is None:
                layers.append([report])
            else:
                layer.append(report)
        return ClosedWindow(window_s, tuple(tuple(layer) for layer in layers))
