"""Drift scores against hand-computed values, and baselines read from reference profiles."""

from __future__ import annotations

import logging
import math
from typing import Any

import numpy as np
import pytest

from packager.reference import profile_data
from runtime.manifest import TensorSpec
from runtime.telemetry.drift import SMOOTHING, baselines, drift_scores, js_distance, psi

SPEC = (TensorSpec("x", "float32", (None, 2)),)


def profile(features: dict[str, Any]) -> dict[str, Any]:
    return {"rows": 100, "bins": 3, "features": features}


NUMERIC = {
    "input": "x",
    "index": 0,
    "kind": "numeric",
    "min": 0.0,
    "max": 3.0,
    "mean": 1.5,
    "std": 1.0,
    "bin_edges": [0.0, 1.0, 2.0, 3.0],
    "histogram": [10, 10, 10],
}
CATEGORICAL = {
    "input": "x",
    "index": 1,
    "kind": "categorical",
    "min": 1.0,
    "max": 2.0,
    "frequencies": {"1": 5, "2": 5},
}


def test_psi_by_hand() -> None:
    # reference 50/50 and observed 30/70, each bin + 0.5 before normalizing:
    # p = (50.5/101, 50.5/101) = (0.5, 0.5); q = (30.5/101, 70.5/101) = (0.30198, 0.69802)
    # PSI = (0.30198 - 0.5) ln(0.30198 / 0.5) + (0.69802 - 0.5) ln(0.69802 / 0.5)
    #     = (-0.19802)(-0.50422) + (0.19802)(0.33364) = 0.09985 + 0.06607 = 0.16592
    assert SMOOTHING == 0.5
    assert psi(np.array([50, 50]), np.array([30, 70])) == pytest.approx(0.16592, abs=1e-5)
    q0, q1 = 30.5 / 101, 70.5 / 101
    exact = (q0 - 0.5) * math.log(q0 / 0.5) + (q1 - 0.5) * math.log(q1 / 0.5)
    assert psi(np.array([50, 50]), np.array([30, 70])) == pytest.approx(exact, rel=1e-12)


def test_js_distance_by_hand() -> None:
    # p = (0.5, 0.5), q = (0.3, 0.7), m = (0.4, 0.6)
    # JSD = ½[0.5 log2(0.5/0.4) + 0.5 log2(0.5/0.6)] + ½[0.3 log2(0.3/0.4) + 0.7 log2(0.7/0.6)]
    #     = ½[0.16096 - 0.13152] + ½[-0.12451 + 0.15567] = 0.01472 + 0.01558 = 0.03030
    # distance = sqrt(0.03030) = 0.17408
    assert js_distance(np.array([1, 1]), np.array([3, 7])) == pytest.approx(0.17408, abs=1e-5)


def test_identical_and_disjoint_distributions() -> None:
    same = np.array([3.0, 5.0, 2.0])
    assert psi(same, same) == pytest.approx(0.0, abs=1e-12)
    # the same shape from more data: smoothing weighs less on the bigger sample, so near 0
    assert 0 < psi(same, same * 100) < 0.01
    assert js_distance(same, same * 7) == pytest.approx(0.0, abs=1e-7)
    assert js_distance(np.array([1, 0]), np.array([0, 1])) == pytest.approx(1.0)
    assert math.isfinite(psi(np.array([1, 0]), np.array([0, 1])))


def test_numeric_values_outside_the_edges_go_to_the_end_bins() -> None:
    (feature,) = baselines(profile({"a": NUMERIC}), SPEC)
    values = np.array([-5.0, 0.5, 1.0, 2.9, 3.0, 99.0])
    # -5 and 0.5 → bin 0; 1.0 sits on an interior edge → bin 1 (as numpy.histogram); 2.9, 3.0
    # (the last edge) and 99 → bin 2
    assert feature.counts(values).tolist() == [2.0, 1.0, 3.0]
    score = feature.score(np.array([0.5, 1.5, 2.5, np.nan]))
    assert score is not None and score.n == 3
    assert score.psi == pytest.approx(0.0, abs=1e-12)  # one per bin, like the reference
    assert feature.score(np.array([np.nan, np.inf])) is None


def test_categorical_unseen_levels_get_their_own_bucket() -> None:
    (feature,) = baselines(profile({"c": CATEGORICAL}), SPEC)
    values = np.array([1.0, 2.0, 2.0, 7.0])
    assert feature.counts(values).tolist() == [1.0, 2.0, 1.0]
    # reference (5, 5, 0) + ½ = (5.5, 5.5, 0.5) / 11.5
    # observed (1, 2, 1) + ½ = (1.5, 2.5, 1.5) / 5.5
    p = np.array([5.5, 5.5, 0.5]) / 11.5
    q = np.array([1.5, 2.5, 1.5]) / 5.5
    by_hand = float(np.sum((q - p) * np.log(q / p)))
    score = feature.score(values)
    assert score is not None
    assert score.psi == pytest.approx(by_hand, rel=1e-12)
    assert score.psi == pytest.approx(0.5376, abs=1e-4)


def test_drift_scores_pick_their_columns() -> None:
    found = baselines(profile({"a": NUMERIC, "c": CATEGORICAL}), SPEC)
    table = np.array([[0.5, 1.0], [1.5, 2.0], [2.5, 1.0], [2.6, 2.0]])
    scores = drift_scores(found, {"x": table})
    assert set(scores) == {"a", "c"}
    assert scores["c"].n == 4 and scores["c"].js == pytest.approx(0.0, abs=1e-7)
    assert drift_scores(found, {"other": table}) == {}
    doc = scores["a"].to_dict()
    assert set(doc) == {"psi", "js"}


def test_a_real_reference_profile_gives_one_baseline_per_feature() -> None:
    rng = np.random.default_rng(0)
    data = {"x": np.column_stack([rng.normal(size=500), rng.integers(0, 3, size=500)])}
    prof = profile_data(data).profile
    found = baselines(prof, SPEC)
    assert [(f.label, f.kind) for f in found] == [("x[0]", "numeric"), ("x[1]", "categorical")]
    same = drift_scores(found, {"x": data["x"].astype(np.float64)})
    assert same["x[0]"].psi < 0.01 and same["x[1]"].psi < 0.01
    shifted = data["x"] + np.array([2.0, 0.0])
    assert drift_scores(found, {"x": shifted})["x[0]"].psi > 1.0


@pytest.mark.parametrize(
    "bad",
    [
        {**NUMERIC, "bin_edges": [0.0, 2.0, 1.0, 3.0]},
        {**NUMERIC, "histogram": [10, 10]},
        {**NUMERIC, "histogram": [0, 0, 0]},
        {**NUMERIC, "bin_edges": "0,1,2,3"},
        {**NUMERIC, "histogram": [1, -1, 3]},
    ],
    ids=["edges not increasing", "bins and edges disagree", "empty", "not a list", "negative"],
)
def test_malformed_bins_give_no_baseline_and_a_log_line(bad, caplog) -> None:
    with caplog.at_level(logging.WARNING):
        found = baselines(profile({"a": bad, "c": CATEGORICAL}), SPEC)
    assert [f.label for f in found] == ["c"]
    assert "no drift score for feature a" in caplog.text


def test_an_unusable_profile_gives_no_baselines(caplog) -> None:
    with caplog.at_level(logging.WARNING):
        assert baselines({"features": {"a": {**NUMERIC, "input": "nope"}}}, SPEC) == ()
    assert "reference profile is unusable" in caplog.text
