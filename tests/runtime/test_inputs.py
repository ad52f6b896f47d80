"""Requests converted to the model's input type: a value that does not fit is refused by name,
never wrapped or turned into infinity, and the conversion raises no numpy warning."""

from __future__ import annotations

import warnings

import numpy as np
import pytest

from runtime.errors import InputError
from runtime.inputs import InputChecker
from runtime.manifest import TensorSpec

FITS = [
    ("float32", np.float64, 1.5),
    ("float32", np.float64, -3.0e38),
    ("float32", np.int64, 2**62),
    ("int32", np.int64, -(2**31)),
    ("int32", np.uint32, 2**31 - 1),
    ("int64", np.uint8, 255),
]

BEYOND = [
    ("float32", np.float64, 1e300, "dtype"),
    ("float32", np.float64, -4.0e38, "dtype"),
    ("int32", np.int64, 2**40, "dtype"),
    ("int32", np.int64, -(2**31) - 1, "dtype"),
    ("int32", np.uint32, 2**31, "dtype"),
    ("float32", np.float64, np.inf, "non-finite"),
    ("float32", np.float64, np.nan, "non-finite"),
]


def _check(model_type: str, request_type: type, value: float) -> np.ndarray:
    checker = InputChecker([TensorSpec("x", model_type, (None, 2))])
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        return checker.check({"x": np.array([[0, value]], dtype=request_type)})["x"]


@pytest.mark.parametrize(("model_type", "request_type", "value"), FITS)
def test_values_that_fit_are_converted_exactly_enough(model_type, request_type, value):
    got = _check(model_type, request_type, value)
    assert got.dtype == np.dtype(model_type)
    assert got[0, 1] == pytest.approx(value, rel=1e-6)


@pytest.mark.parametrize(("model_type", "request_type", "value", "reason"), BEYOND)
def test_values_beyond_the_model_type_are_refused(model_type, request_type, value, reason):
    with pytest.raises(InputError) as e:
        _check(model_type, request_type, value)
    assert e.value.reason == reason
    if reason == "dtype":
        assert f"beyond the range of {model_type}" in str(e.value)
