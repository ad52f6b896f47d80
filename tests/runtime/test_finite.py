"""The input checker's finiteness check: a NaN or an infinity anywhere in a floating-point request
is refused with reason ``non-finite``, any finite request passes (the largest values and the
subnormal ones included), whatever numpy's floating-point error settings, and no request makes
numpy warn."""

from __future__ import annotations

import subprocess
import sys
import textwrap
import warnings

import hypothesis.extra.numpy as hnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from runtime.errors import InputError
from runtime.inputs import InputChecker, _high_byte
from runtime.manifest import TensorSpec

F32, F64 = np.finfo(np.float32), np.finfo(np.float64)


def _passes(array: np.ndarray) -> bool:
    """Whether an InputChecker for ``array``'s dtype and width accepts it."""
    checker = InputChecker([TensorSpec("x", str(array.dtype), (None, array.shape[1]))])
    try:
        checker.check({"x": array})
    except InputError as e:
        assert e.reason == "non-finite", e
        return False
    return True


def _extremes(dtype: type, rows: int = 1024, width: int = 64) -> list[np.ndarray]:
    info = np.finfo(dtype)
    big = np.full((rows, width), info.max, dtype=dtype)
    mixed = big.copy()
    mixed[::2] = -info.max
    tiny = np.full((rows, width), info.smallest_subnormal, dtype=dtype)
    return [big, -big, mixed, tiny, -tiny, np.zeros((rows, width), dtype=dtype)]


def _poisoned(dtype: type) -> list[np.ndarray]:
    cases = []
    for values in ([np.inf], [-np.inf], [np.nan], [np.inf, -np.inf], [np.nan, np.inf]):
        for base in _extremes(dtype, rows=16)[:4]:
            array = base.copy()
            for i, value in enumerate(values):
                array[3 + i, 7 * i] = value
            cases.append(array)
    return cases


ERROR_MODES: dict[str, dict[str, str]] = {
    "numpy defaults": {},
    "every flag raises": {"all": "raise"},
    "every flag ignored": {"all": "ignore"},
    "underflow warns": {"under": "warn"},
}


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("mode", ERROR_MODES)
def test_finite_extremes_pass_and_any_nan_or_infinity_is_refused(dtype, mode):
    with warnings.catch_warnings(), np.errstate(**ERROR_MODES[mode]):
        warnings.simplefilter("error")  # a warning would fail the check, or the test
        for array in _extremes(dtype):
            assert _passes(array), (array[0, 0], array.shape)
        for array in _poisoned(dtype):
            assert not _passes(array)


def test_values_on_either_side_of_the_byte_scans_threshold():
    """2**127 is the smallest float32 whose top byte is 0x7f (the scan then defers to the
    elementwise check); the float just below it is decided by the scan alone."""
    for dtype, edge in ((np.float32, 2.0**127), (np.float64, 2.0**1008)):
        below = np.nextafter(dtype(edge), dtype(0))
        for value in (below, dtype(edge), -below, -dtype(edge)):
            assert _passes(np.full((3, 5), value, dtype=dtype)), (dtype, value)
            poisoned = np.full((3, 5), value, dtype=dtype)
            poisoned[1, 2] = np.nan
            assert not _passes(poisoned)


@pytest.mark.parametrize("byteorder", ["little", "big"])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_the_high_byte_is_where_the_sign_and_exponent_are(byteorder, dtype):
    values = np.array([np.inf, -np.inf, np.nan, 1.0, -2.5], dtype=dtype)
    order = "<" if byteorder == "little" else ">"
    raw = values.astype(np.dtype(dtype).newbyteorder(order)).tobytes()
    offset = _high_byte(np.dtype(dtype), byteorder)
    assert offset is not None
    high = raw[offset :: np.dtype(dtype).itemsize]
    assert list(high[:3]) == [0x7F, 0xFF, 0x7F]  # +inf, -inf, numpy's NaN
    assert high[3] == 0x3F and high[4] == 0xC0
    assert _high_byte(np.dtype(np.float16), byteorder) is None


def test_a_request_too_large_for_the_fast_check_gets_the_same_answers():
    wide = np.full((2, 1 << 16), F32.max, dtype=np.float32)  # 2**17 elements
    assert _passes(wide)
    wide[1, -1] = np.nan
    assert not _passes(wide)


def test_sizes_that_change_between_calls_get_their_own_answers():
    checker = InputChecker([TensorSpec("x", "float32", (None, 4))])
    for rows in (1, 3, 1, 7, 2):
        array = np.full((rows, 4), F32.max, dtype=np.float32)
        checker.check({"x": array})
        array[-1, -1] = np.inf
        with pytest.raises(InputError, match="NaN or infinity"):
            checker.check({"x": array})


def test_float16_and_strided_requests_are_checked_too():
    half = np.array([[1.0, np.inf]], dtype=np.float16)
    with pytest.raises(InputError):
        InputChecker([TensorSpec("x", "float16", (None, 2))]).check({"x": half})
    strided = np.full((4, 8), F32.max, dtype=np.float32)[:, ::2]
    strided[2, 1] = np.nan
    assert not strided.flags.c_contiguous
    assert not _passes(strided)


_VALUES = {
    np.float32: st.floats(width=32, allow_nan=True, allow_infinity=True, allow_subnormal=True),
    np.float64: st.floats(allow_nan=True, allow_infinity=True, allow_subnormal=True),
}


@settings(max_examples=400, deadline=None)
@given(data=st.data(), dtype=st.sampled_from([np.float32, np.float64]))
def test_the_answer_is_numpys_isfinite(data, dtype):
    shape = data.draw(hnp.array_shapes(min_dims=2, max_dims=2, max_side=40))
    array = data.draw(hnp.arrays(dtype, shape, elements=_VALUES[dtype]))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert _passes(array) == bool(np.isfinite(array).all())


def test_refusing_infinities_of_both_signs_prints_no_warning():
    """In a fresh interpreter with Python's default warning filters: the refusal is an
    InputError and nothing else is printed, and a request of the largest float32 values passes
    without a word."""
    script = textwrap.dedent(
        """
        import numpy as np
        from runtime.errors import InputError
        from runtime.inputs import InputChecker, _high_byte
        from runtime.manifest import TensorSpec

        checker = InputChecker([TensorSpec("x", "float32", (None, 3))])
        big = np.float32(3.4e38)
        checker.check({"x": np.array([[big, -big, big]] * 5, dtype=np.float32)})
        for _ in range(2):
            try:
                checker.check({"x": np.array([[np.inf, 1.0, -np.inf]], dtype=np.float32)})
            except InputError as e:
                print(e.reason)
        """
    )
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=60, check=False
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["non-finite", "non-finite"]
    assert done.stderr == ""
