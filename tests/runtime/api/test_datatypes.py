"""Output arrays are named by the protocol's datatype whatever their byte order; strings, bytes,
objects and types the protocol lacks are BYTES."""

from __future__ import annotations

import numpy as np
import pytest

from runtime.api.tensors import DATATYPES, datatype_of_array, datatype_of_manifest

NUMERIC = [
    ("bool", "BOOL"), ("uint8", "UINT8"), ("uint16", "UINT16"), ("uint32", "UINT32"),
    ("uint64", "UINT64"), ("int8", "INT8"), ("int16", "INT16"), ("int32", "INT32"),
    ("int64", "INT64"), ("float16", "FP16"), ("float32", "FP32"), ("float64", "FP64"),
]  # fmt: skip


@pytest.mark.parametrize(("dtype", "datatype"), NUMERIC)
def test_numeric_arrays_in_either_byte_order(dtype, datatype):
    native = np.zeros(3, dtype=dtype)
    assert datatype_of_array(native) == datatype == datatype_of_manifest(dtype)
    assert datatype in DATATYPES
    swapped = native.astype(native.dtype.newbyteorder("S"))
    assert datatype_of_array(swapped) == datatype


@pytest.mark.parametrize(
    "array",
    [np.array(["a", "bc"]), np.array([b"a"]), np.array([{"x": 1}], dtype=object),
     np.zeros(2, dtype=np.complex64), np.zeros(2, dtype="datetime64[s]")],
)  # fmt: skip
def test_other_arrays_are_bytes(array):
    assert datatype_of_array(array) == "BYTES"
