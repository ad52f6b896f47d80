"""The reference data profile and its warnings."""

from __future__ import annotations

import numpy as np

from packager.reference import MIN_ROWS, profile_data


def test_numeric_and_categorical_features():
    rng = np.random.default_rng(0)
    table = np.column_stack([rng.normal(size=200), rng.integers(0, 3, size=200)])
    result = profile_data({"input": table}, ["height", "colour"])
    height = result.profile["features"]["height"]
    assert height["kind"] == "numeric" and len(height["bin_edges"]) == 11
    assert sum(height["histogram"]) == 200
    assert abs(height["mean"] - table[:, 0].mean()) < 1e-12
    colour = result.profile["features"]["colour"]
    assert colour["kind"] == "categorical"
    assert sum(colour["frequencies"].values()) == 200 and set(colour["frequencies"]) == {
        "0",
        "1",
        "2",
    }
    assert result.warnings == ()


def test_warnings_for_data_unfit_to_profile():
    table = np.array([[1.0, 5.0], [np.nan, 5.0], [2.0, 5.0], [2.0, 5.0]])
    result = profile_data({"x": table})
    text = " | ".join(result.warnings)
    assert "x[0]: 1 missing" in text
    assert "x[1]: constant (5)" in text
    assert "1 duplicated row" in text
    assert f"at least {MIN_ROWS}" in text
    assert result.profile["features"]["x[0]"]["count"] == 3


def test_several_inputs_and_images_are_handled():
    result = profile_data(
        {
            "a": np.zeros((60, 2)) + np.arange(60)[:, None],
            "img": np.zeros((60, 3, 8, 8)),
            "ids": np.arange(60),
        }
    )
    assert set(result.profile["features"]) == {"a[0]", "a[1]", "ids[0]"}
