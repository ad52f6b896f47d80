"""Telemetry windows: what every model did between two window closes (docs/telemetry.md).

:meth:`WindowCollector.observe` runs on the request's thread: under one lock it counts the
request into its model version's :class:`~runtime.telemetry.aggregate.ModelWindow` (cheap,
bounded, never raises). :meth:`WindowCollector.close`, on the window thread, swaps the open
window for an empty one under the same lock and then computes percentiles, distributions and
drift off the request path. Each observation is counted in exactly one window: the one open when
its request finished.
"""

from __future__ import annotations

import logging
import random
import threading
import time
from dataclasses import dataclass
from typing import Any, Callable, Iterable, Optional, Sequence

from runtime.service import FeedbackRecord, Observation
from runtime.telemetry.aggregate import FOLD, ModelWindow, WindowLimits
from runtime.telemetry.drift import FeatureBaseline

__all__ = ["ClosedWindow", "ModelReport", "WindowCollector", "WindowLimits"]

log = logging.getLogger(__name__)

MAX_SAMPLE_INPUTS = 100
"""Most raw input rows per model and window that telemetry may carry."""


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
        self._lock = threading.Lock()
        self._random = random.Random(seed)
        self._current: dict[str, ModelWindow] = {}
        """Model name → the window of the version seen last (the request path's lookup)."""
        self._models: dict[tuple[str, str], ModelWindow] = {}
        self._last: dict[str, int] = {}
        """Model name → requests it served in the last window (sizes the samples' thinning)."""
        self._opened = clock()
        self._faults = 0

    # --- request side ----------------------------------------------------------------------------

    def observe(self, o: Observation) -> None:
        """Count one request (served, refused or failed). Never raises.

        This runs once per request on its thread, so the counters of a served request are
        updated here inline rather than a call further down (each call level costs a request
        about as much as the counting it does)."""
        try:
            with self._lock:
                w = self._current.get(o.model)
                if w is None or w.version != o.version:
                    w = self._window(o.model, o.version)
                if o.rejected is not None or o.error is not None:
                    w.refused_or_failed(o)
                    return
                w.requests += 1
                w.rows += o.rows
                buffer = w.buffer
                buffer.append(o.latency_s)
                if len(buffer) >= FOLD:
                    w.fold()
                w.served(o)
        except Exception:  # noqa: BLE001 - an observer must never fail a request
            self._fault("observe")

    def feedback(self, record: FeedbackRecord) -> None:
        """Count ground truth for an earlier prediction in the open window. Never raises."""
        try:
            with self._lock:
                self._window(record.model, record.version).add_feedback(record)
        except Exception:  # noqa: BLE001 - an observer must never fail a request
            self._fault("feedback")

    def _window(self, name: str, version: str) -> ModelWindow:
        window = self._models.get((name, version))
        if window is None:
            expected = self._last.get(name, 0)
            window = ModelWindow(version, self.limits, self._random, expected)
            self._models[(name, version)] = window
        self._current[name] = window
        return window

    def _fault(self, where: str) -> None:
        self._faults += 1
        if self._faults in (1, 10, 100) or self._faults % 10_000 == 0:
            log.exception(
                "telemetry %s failed (%d time(s)); requests were not affected", where, self._faults
            )

    # --- window thread ---------------------------------------------------------------------------

    def close(self, baselines: Baselines, idle: Iterable[tuple[str, str]] = ()) -> ClosedWindow:
        """End the open window and report it. ``idle`` lists (name, version) of models to report
        even when nothing happened to them (the loaded ones)."""
        with self._lock:
            models, self._models, self._current = self._models, {}, {}
            opened, self._opened = self._opened, self._clock()
            window_s = max(0.0, self._opened - opened)
            self._last = {}
            for (name, _), w in models.items():
                self._last[name] = self._last.get(name, 0) + w.requests
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
