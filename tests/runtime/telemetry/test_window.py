"""Telemetry windows: exact counts for a known request stream, exactly-once across closes,
bounded memory, and the samples and histograms behind percentiles and drift."""

from __future__ import annotations

import random
import threading
from pathlib import Path
from typing import Any, Optional

import numpy as np
import pytest

from runtime.errors import InputError
from runtime.registry import ModelRegistry
from runtime.service import FeedbackRecord, InferenceService, Observation
from runtime.store import Store
from runtime.telemetry.drift import baselines
from runtime.telemetry.sampling import LogHistogram, Reservoir
from runtime.telemetry.window import WindowCollector, WindowLimits


def nothing(name: str, version: str) -> tuple:
    return ()


def served(
    latency_s: float,
    predicted: Any,
    model: str = "m",
    version: str = "1.0.0",
    feeds: Optional[dict[str, Any]] = None,
    **extra: Any,
) -> Observation:
    predicted = np.atleast_1d(np.asarray(predicted))
    return Observation(
        model, version, latency_s, int(predicted.shape[0]), feeds, None, predicted, **extra
    )


def nearest_rank(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[max(0, int(np.ceil(q / 100 * len(ordered))) - 1)]


def test_a_known_stream_gives_exact_counts() -> None:
    collector = WindowCollector()
    latencies = [0.001 * (i + 1) for i in range(20)]  # 1 ms … 20 ms
    labels = [0] * 12 + [1] * 5 + [2] * 3
    for latency, label in zip(latencies, labels):
        collector.observe(served(latency, label, out_of_range={"f0": 1} if label == 2 else {}))
    collector.observe(Observation("m", "1.0.0", 0.0001, 2, rejected="shape"))
    collector.observe(Observation("m", "1.0.0", 0.0001, 1, rejected="shape"))
    collector.observe(Observation("m", "1.0.0", 0.0001, 3, rejected="non-finite"))
    collector.observe(Observation("m", "1.0.0", 0.002, 1, error="backend failed"))
    closed = collector.close(nothing)
    ((report,),) = closed.layers
    doc = report.doc
    assert closed.requests == doc["requests"] == 24
    assert (doc["rows"], doc["errors"], doc["rejected"]) == (20, 1, 3)
    assert doc["rejected_reasons"] == {"non-finite": 1, "shape": 2}
    assert doc["missing"] == {"requests": 1, "rows": 3}
    assert doc["out_of_range"] == {"f0": 3}
    assert doc["predictions"] == {"count": 20, "classes": {"0": 12, "1": 5, "2": 3}}
    assert (report.errors, report.last_error) == (1, "backend failed")
    for q in (50, 95, 99):  # log buckets: within 1 % of the nearest-rank percentile
        assert doc["latency_ms"][f"p{q}"] == pytest.approx(
            nearest_rank(latencies, q) * 1e3, rel=0.011
        )
    assert doc["latency_ms"]["max"] == 20.0
    assert "samples" not in doc and doc["drift"] == {}


def test_regression_outputs_give_quantiles_and_feedback_gives_errors() -> None:
    collector = WindowCollector()
    for value in range(1, 101):
        collector.observe(served(0.001, [float(value)]))
    collector.observe(served(0.001, [np.nan]))
    collector.feedback(
        FeedbackRecord("m", "1.0.0", "regression", np.array([2.0, 4.0]), np.array([3.0, 1.0]))
    )
    doc = collector.close(nothing).layers[0][0].doc
    predictions = doc["predictions"]
    assert (predictions["count"], predictions["non_finite"]) == (101, 1)
    assert predictions["quantiles"]["p50"] == pytest.approx(50.5)
    assert (predictions["min"], predictions["max"]) == (1.0, 100.0)
    # errors 1 and -3: MAE = 2, RMSE = sqrt((1 + 9) / 2) = sqrt(5)
    assert doc["feedback"] == {"count": 2, "mae": 2.0, "rmse": pytest.approx(5**0.5)}


def test_feedback_accuracy_compares_labels_of_any_type() -> None:
    collector = WindowCollector()
    collector.feedback(
        FeedbackRecord("m", "1.0.0", "classification", np.array([1, 2, 3]), np.array([1, 2, 0]))
    )
    collector.feedback(
        FeedbackRecord("m", "1.0.0", "classification", np.array(["cat"]), np.array(["dog"]))
    )
    doc = collector.close(nothing).layers[0][0].doc
    assert doc["feedback"] == {"count": 4, "accuracy": 0.5}
    assert doc["requests"] == 0


def test_two_versions_in_one_window_are_two_layers_and_idle_models_are_listed() -> None:
    collector = WindowCollector()
    collector.observe(served(0.001, 0, version="1.0.0"))
    collector.observe(served(0.001, 0, version="1.1.0"))
    collector.observe(served(0.001, 0, version="1.1.0", model="other"))
    closed = collector.close(nothing, idle=[("m", "1.1.0"), ("idle", "3.0.0")])
    names = [
        [(r.name, r.doc["version"], r.doc["requests"]) for r in layer] for layer in closed.layers
    ]
    assert names == [
        [("m", "1.0.0", 1), ("other", "1.1.0", 1), ("idle", "3.0.0", 0)],
        [("m", "1.1.0", 1)],
    ]
    assert closed.requests == 3


def test_every_observation_lands_in_exactly_one_window() -> None:
    collector = WindowCollector()
    threads, per_thread = 4, 5_000
    closed: list[int] = []
    done = threading.Event()

    def requests() -> None:
        for i in range(per_thread):
            collector.observe(served(0.0001, i % 3))

    def closer() -> None:
        while not done.is_set():
            closed.append(collector.close(nothing).requests)

    workers = [threading.Thread(target=requests) for _ in range(threads)]
    closing = threading.Thread(target=closer)
    closing.start()
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    done.set()
    closing.join()
    closed.append(collector.close(nothing).requests)  # the window open at stop
    assert sum(closed) == threads * per_thread
    assert len([c for c in closed if c]) > 1  # the stream really was split across windows


def test_drift_inputs_are_copied_sampled_and_kept_on_the_device_by_default() -> None:
    profile = {
        "features": {
            "x[0]": {
                "input": "x",
                "index": 0,
                "kind": "numeric",
                "min": 0.0,
                "max": 1.0,
                "mean": 0.5,
                "bin_edges": [0.0, 0.5, 1.0],
                "histogram": [5, 5],
            }
        }
    }
    from runtime.manifest import TensorSpec

    found = baselines(profile, (TensorSpec("x", "float32", (None, 1)),))
    limits = WindowLimits(drift_requests=50, drift_rows=40)
    private, sampling = WindowCollector(limits, seed=1), WindowCollector(limits, 3, seed=1)
    buffer = np.zeros((2, 1), dtype=np.float32)
    for i in range(200):
        buffer[:] = [[0.25], [0.75]] if i % 2 else [[0.3], [0.8]]
        for collector in (private, sampling):
            collector.observe(served(0.001, [0, 1], feeds={"x": buffer.copy()}))
    doc = private.close(lambda n, v: found).layers[0][0].doc
    assert doc["drift_rows"] == 40  # 50 requests of 2 rows kept, 40 rows used
    assert set(doc["drift"]["x[0]"]) == {"psi", "js"}
    assert doc["drift"]["x[0]"]["psi"] == pytest.approx(0.0, abs=0.05)
    assert "samples" not in doc
    shared = sampling.close(lambda n, v: found).layers[0][0].doc
    assert len(shared["samples"]["x"]) == 3


def test_a_real_model_through_the_service(iris_store: Store, iris: dict[str, Path]) -> None:
    registry = ModelRegistry(iris_store)
    collector = WindowCollector()

    class Forward:
        def observe(self, o: Observation) -> None:
            collector.observe(o)

        def feedback(self, record: FeedbackRecord) -> None:
            collector.feedback(record)

        def event(self, kind: str, doc: Any) -> None:
            pass

    service = InferenceService(registry, [Forward()])  # type: ignore[list-item]
    name = registry.get("iris").manifest.model.inputs[0].name
    rows = np.load(iris["rows"])
    ids = [service.predict("iris", {name: rows[i : i + 1]}).id for i in range(5)]
    service.predict("iris", {name: rows})
    for bad in ({name: rows[:, :2]}, {name: np.full((1, 4), np.nan, np.float32)}):
        with pytest.raises(InputError):
            service.predict("iris", bad)
    service.feedback("iris", ids[0], 0)
    manifest = registry.get("iris").manifest
    found = baselines(manifest.reference_profile, manifest.model.inputs)
    doc = collector.close(lambda n, v: found).layers[0][0].doc
    assert (doc["requests"], doc["rows"], doc["rejected"]) == (8, 10, 2)
    assert doc["rejected_reasons"] == {"non-finite": 1, "shape": 1}
    assert doc["predictions"]["count"] == 10
    assert doc["feedback"] == {"count": 1, "accuracy": 1.0}
    assert len(doc["drift"]) == 4 and doc["drift_rows"] == 10


@pytest.mark.parametrize("thin", [1, 10])
def test_reservoir_keeps_a_uniform_sample(thin: int) -> None:
    rng = random.Random(7)
    deciles = np.zeros(10)
    made = 0
    for _ in range(400):
        reservoir: Reservoir[int] = Reservoir(100, rng, thin)
        for item in range(10_000):
            reservoir.seen += 1
            if reservoir.seen >= reservoir.next:
                reservoir.candidate(lambda item=item: item)
        assert reservoir.seen == 10_000 and len(reservoir.items) == 100
        assert len(set(reservoir.items)) == 100
        deciles += np.bincount(np.asarray(reservoir.items) // 1_000, minlength=10)
        made += 1
    expected = made * 100 / 10
    assert np.all(np.abs(deciles - expected) < 0.06 * expected), deciles


def test_log_histogram_percentiles_are_within_one_percent() -> None:
    rng = np.random.default_rng(3)
    values = list(rng.lognormal(mean=-7, sigma=1.5, size=20_000))
    histogram = LogHistogram()
    for start in range(0, len(values), 777):
        histogram.add(values[start : start + 777])
    assert histogram.count == 20_000 and histogram.max == max(values)
    for q in (1, 50, 90, 95, 99, 99.9):
        assert histogram.percentile(q) == pytest.approx(nearest_rank(values, q), rel=0.0101)
    assert histogram.percentile(100) == max(values)
    with pytest.raises(ValueError):
        LogHistogram().percentile(50)


def test_thinning_makes_fewer_copies() -> None:
    def copies(thin: int) -> int:
        made = 0

        def make() -> int:
            nonlocal made
            made += 1
            return made

        reservoir: Reservoir[int] = Reservoir(100, random.Random(3), thin)
        for _ in range(100_000):
            reservoir.seen += 1
            if reservoir.seen >= reservoir.next:
                reservoir.candidate(make)
        assert len(reservoir.items) == 100
        return made

    # all candidates: about k (1 + ln(n / k)) = 100 (1 + ln 1000) ≈ 790 copies; thinned to
    # n / 500 = 200 candidates: about 100 (1 + ln 2) ≈ 170
    assert copies(500) < copies(1) / 3


def test_classes_past_the_bound_are_counted_as_other() -> None:
    collector = WindowCollector(WindowLimits(classes=3))
    for label in range(10):
        collector.observe(served(0.001, [label, label]))
    predictions = collector.close(nothing).layers[0][0].doc["predictions"]
    assert predictions["count"] == 20
    assert len(predictions["classes"]) == 3 and "_other" in predictions["classes"]
    assert sum(predictions["classes"].values()) == 20
