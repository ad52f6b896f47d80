"""Tensors as the Open Inference Protocol writes them: datatype names, JSON data, binary data.

A tensor travels as ``{"name", "datatype", "shape", "data"}`` where ``data`` is the row-major
elements, flat or nested, or (the binary tensor data extension) as raw little-endian bytes after
the JSON document; ``BYTES`` elements are strings in JSON and 4-byte-length-prefixed in binary.
Decoding checks that the elements fit the declared datatype and shape and nothing more: whether
the tensor fits the model is :class:`runtime.inputs.InputChecker`'s question.

Every refusal is an :class:`InputError`.
"""

from __future__ import annotations

import struct
from math import prod
from typing import Any, Optional

import numpy as np

from runtime.errors import InputError

MAX_RANK = 16
"""Most dimensions a request tensor may declare."""

_DATATYPES: dict[str, np.dtype] = {
    "BOOL": np.dtype(np.bool_),
    "UINT8": np.dtype(np.uint8),
    "UINT16": np.dtype(np.uint16),
    "UINT32": np.dtype(np.uint32),
    "UINT64": np.dtype(np.uint64),
    "INT8": np.dtype(np.int8),
    "INT16": np.dtype(np.int16),
    "INT32": np.dtype(np.int32),
    "INT64": np.dtype(np.int64),
    "FP16": np.dtype(np.float16),
    "FP32": np.dtype(np.float32),
    "FP64": np.dtype(np.float64),
    "BYTES": np.dtype(np.str_),
}
DATATYPES = tuple(_DATATYPES)
"""Every datatype name the API reads and writes."""

_BY_MANIFEST = {
    "bool": "BOOL", "uint8": "UINT8", "uint16": "UINT16", "uint32": "UINT32", "uint64": "UINT64",
    "int8": "INT8", "int16": "INT16", "int32": "INT32", "int64": "INT64", "float16": "FP16",
    "float32": "FP32", "float64": "FP64", "string": "BYTES",
}  # fmt: skip
_LENGTH = struct.Struct("<I")


def datatype_of_manifest(dtype: str) -> str:
    """The protocol's name for a manifest dtype (``float32`` → ``FP32``, ``string`` → ``BYTES``)."""
    return _BY_MANIFEST[dtype]


_BY_DTYPE = {np.dtype(name): kind for name, kind in _BY_MANIFEST.items() if name != "string"}


def datatype_of_array(array: np.ndarray) -> str:
    """The protocol's name for an output array's dtype (strings and objects are ``BYTES``)."""
    found = _BY_DTYPE.get(array.dtype)  # native byte order: a dict lookup (``dtype.name`` is slow)
    if found is not None:
        return found
    if array.dtype.kind in "USO":
        return "BYTES"
    return _BY_MANIFEST.get(array.dtype.name, "BYTES")


def check_shape(name: str, shape: Any, max_elements: int) -> tuple[int, ...]:
    """``shape`` as a tuple of non-negative ints with at most ``max_elements`` elements."""
    if not isinstance(shape, list) or len(shape) > MAX_RANK:
        raise InputError(f"input {name}: shape must be a list of at most {MAX_RANK} ints", "shape")
    for dim in shape:
        if isinstance(dim, bool) or not isinstance(dim, int) or dim < 0:
            raise InputError(f"input {name}: shape {shape} must hold non-negative ints", "shape")
    count = prod(shape)
    if count > max_elements:
        raise InputError(f"input {name}: shape {shape} holds more elements than the body", "size")
    return tuple(shape)


def _dtype(name: str, datatype: Any) -> np.dtype:
    if not isinstance(datatype, str) or datatype not in _DATATYPES:
        raise InputError(
            f"input {name}: unknown datatype {str(datatype)[:40]!r} (use one of "
            f"{', '.join(DATATYPES)})",
            "dtype",
        )
    return _DATATYPES[datatype]


def _fit(name: str, flat: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    if flat.size != prod(shape):
        raise InputError(
            f"input {name}: shape {list(shape)} needs {prod(shape)} elements, data has {flat.size}",
            "shape",
        )
    return flat.reshape(shape)


def _strings(name: str, data: list[Any]) -> np.ndarray:
    """Every leaf of nested lists ``data``, which must all be strings, as a flat str array."""
    leaves: list[str] = []
    stack: list[Any] = [iter(data)]
    while stack:
        for item in stack[-1]:
            if isinstance(item, list):
                stack.append(iter(item))
                break
            if not isinstance(item, str):
                raise InputError(f"input {name}: BYTES data must be strings", "dtype")
            leaves.append(item)
        else:
            stack.pop()
    return np.array(leaves, dtype=np.str_)


def decode_json(name: str, datatype: Any, shape: tuple[int, ...], data: Any) -> np.ndarray:
    """A tensor from JSON ``data`` (flat or nested lists), checked against datatype and shape."""
    want = _dtype(name, datatype)
    if not isinstance(data, list):
        raise InputError(f"input {name}: data must be a list of elements", "format")
    if want.kind == "U":
        return _fit(name, _strings(name, data), shape)
    try:
        array = np.array(data)
    except (ValueError, TypeError, OverflowError, RecursionError) as e:
        raise InputError(f"input {name}: data is not a rectangular array of numbers") from e
    kind = array.dtype.kind
    if array.size == 0:
        array = array.astype(want)
    elif want.kind == "b":
        if kind != "b":
            raise InputError(f"input {name}: BOOL data must be true/false", "dtype")
    elif want.kind in "iu":
        if kind not in "biu":
            raise InputError(f"input {name}: {datatype} data must be integers", "dtype")
        info = np.iinfo(want)
        if kind != "b" and (int(array.min()) < info.min or int(array.max()) > info.max):
            raise InputError(f"input {name}: a value does not fit {datatype}", "dtype")
        array = array.astype(want)
    elif kind not in "biuf":
        raise InputError(f"input {name}: {datatype} data must be numbers", "dtype")
    else:
        with np.errstate(all="ignore"):  # too large for FP16/FP32: infinity, refused later
            array = array.astype(want)
    return _fit(name, array.reshape(-1), shape)


def decode_binary(name: str, datatype: Any, shape: tuple[int, ...], raw: bytes) -> np.ndarray:
    """A tensor from its raw bytes (binary tensor data extension), little-endian, row-major."""
    want = _dtype(name, datatype)
    if want.kind == "U":
        return _fit(name, _unpack_strings(name, raw), shape)
    itemsize = 1 if want.kind == "b" else want.itemsize
    if len(raw) % itemsize:
        raise InputError(
            f"input {name}: {len(raw)} bytes is not a whole number of {datatype} elements", "shape"
        )
    if want.kind == "b":
        flat = np.frombuffer(raw, dtype=np.uint8) != 0
    else:
        flat = np.frombuffer(raw, dtype=want.newbyteorder("<")).astype(want, copy=False)
    return _fit(name, flat, shape)


def _unpack_strings(name: str, raw: bytes) -> np.ndarray:
    values: list[str] = []
    offset = 0
    while offset < len(raw):
        if offset + 4 > len(raw):
            raise InputError(f"input {name}: BYTES element length is cut off", "format")
        (length,) = _LENGTH.unpack_from(raw, offset)
        offset += 4
        if offset + length > len(raw):
            raise InputError(f"input {name}: BYTES element is longer than the data", "format")
        try:
            values.append(raw[offset : offset + length].decode("utf-8"))
        except UnicodeDecodeError as e:
            raise InputError(f"input {name}: BYTES element is not UTF-8 text", "dtype") from e
        offset += length
    return np.array(values, dtype=np.str_)


def _text(value: Any) -> str:
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else str(value)


def encode_json(array: np.ndarray) -> list[Any]:
    """An output's elements, row-major and flat, as JSON values."""
    if array.dtype.kind in "SO":
        return [_text(v) for v in array.reshape(-1)]
    result: list[Any] = array.reshape(-1).tolist()
    return result


def encode_binary(array: np.ndarray) -> bytes:
    """An output's raw bytes for the binary tensor data extension."""
    kind = array.dtype.kind
    if kind in "USO":
        parts = []
        for value in array.reshape(-1):
            data = value if isinstance(value, bytes) else str(value).encode("utf-8")
            parts.append(_LENGTH.pack(len(data)))
            parts.append(data)
        return b"".join(parts)
    if kind == "b":
        return array.astype(np.uint8).tobytes()
    little = array.dtype.newbyteorder("<")
    return np.ascontiguousarray(array, dtype=little).tobytes()


def tensor_shape(shape: tuple[Optional[int], ...]) -> list[int]:
    """A manifest shape as the protocol writes it: ``-1`` for a dynamic dimension."""
    return [-1 if dim is None else dim for dim in shape]
