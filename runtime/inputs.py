"""Prediction requests: read them from files (JSON, CSV, NPY, NPZ) and check them against the
model's input signature before they reach a backend.

Every rejection is an :class:`InputError` that says what was expected.
"""

from __future__ import annotations

import io
import json
import sys
from pathlib import Path
from typing import Any, Mapping, NoReturn, Optional, Sequence

import numpy as np

from runtime.backends.base import numpy_dtype
from runtime.errors import InputError, UsageError
from runtime.limits import DEFAULT_INPUT_LIMITS, InputLimits
from runtime.manifest import TensorSpec

FORMATS = (".json", ".csv", ".npy", ".npz")


def read_request_bytes(
    data: bytes, fmt: str, specs: Sequence[TensorSpec], limits: InputLimits = DEFAULT_INPUT_LIMITS
) -> dict[str, np.ndarray]:
    """Parse a request in format ``fmt`` (one of FORMATS) into arrays keyed by input name."""
    if len(data) > limits.max_request_bytes:
        raise InputError(
            f"request is {len(data)} bytes, the limit is {limits.max_request_bytes}", "size"
        )
    if fmt == ".json":
        return _from_json(data, specs)
    if fmt == ".csv":
        return _single(specs, _from_csv(data), "CSV")
    if fmt == ".npy":
        return _single(specs, _load_npy(data), "NPY")
    if fmt == ".npz":
        return _from_npz(data)
    raise UsageError(f"unknown input format {fmt!r}; use one of {', '.join(FORMATS)}")


def read_request(
    path: Path, specs: Sequence[TensorSpec], limits: InputLimits = DEFAULT_INPUT_LIMITS
) -> dict[str, np.ndarray]:
    """Read a request file; the format comes from its suffix."""
    fmt = path.suffix.lower()
    if fmt not in FORMATS:
        raise UsageError(f"{path}: unknown input format; use one of {', '.join(FORMATS)}")
    try:
        with path.open("rb") as f:
            data = f.read(limits.max_request_bytes + 1)
    except OSError as e:
        raise UsageError(f"cannot read {path}: {e.strerror}") from e
    return read_request_bytes(data, fmt, specs, limits)


def _single(specs: Sequence[TensorSpec], array: np.ndarray, what: str) -> dict[str, np.ndarray]:
    if len(specs) != 1:
        names = ", ".join(s.name for s in specs)
        raise InputError(
            f"this model has several inputs ({names}): {what} holds one; use NPZ/JSON", "names"
        )
    return {specs[0].name: array}


def _from_json(data: bytes, specs: Sequence[TensorSpec]) -> dict[str, np.ndarray]:
    try:
        doc: Any = json.loads(data.decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError) as e:
        raise InputError(f"request is not valid JSON: {e}") from e
    if isinstance(doc, dict) and isinstance(doc.get("inputs"), dict):
        doc = doc["inputs"]
    if isinstance(doc, dict):
        return {str(k): _to_array(v, str(k)) for k, v in doc.items()}
    if isinstance(doc, list):
        return _single(specs, _to_array(doc, specs[0].name if specs else "input"), "a JSON list")
    raise InputError("JSON request must be a list of rows or an object keyed by input name")


def _to_array(value: Any, name: str) -> np.ndarray:
    try:
        array = np.asarray(value)
    except (ValueError, TypeError, RecursionError) as e:
        raise InputError(f"{name}: not a rectangular array: rows have different lengths") from e
    if array.dtype == object:
        raise InputError(f"{name}: rows have different lengths or mixed types")
    return array


def _from_csv(data: bytes) -> np.ndarray:
    import csv  # csv and zipfile load only for the formats that need them (start-up time)

    try:
        rows = list(csv.reader(io.StringIO(data.decode("utf-8-sig"))))
    except (UnicodeDecodeError, csv.Error) as e:
        raise InputError(f"request is not valid CSV: {e}") from e
    rows = [r for r in rows if r]
    if len(rows) < 2:
        raise InputError("CSV request needs a header row and at least one data row")
    width = len(rows[0])
    values = []
    for line, row in enumerate(rows[1:], start=2):
        if len(row) != width:
            raise InputError(f"CSV line {line}: {len(row)} fields, the header has {width}")
        try:
            values.append([float(x) if x.strip() else float("nan") for x in row])
        except ValueError as e:
            raise InputError(f"CSV line {line}: {e}") from e
    return np.asarray(values, dtype=np.float64)


def _load_npy(data: bytes) -> np.ndarray:
    try:
        array = np.load(io.BytesIO(data), allow_pickle=False)
    except (ValueError, OSError, EOFError) as e:
        raise InputError(f"request is not a valid .npy file: {e}") from e
    if not isinstance(array, np.ndarray):
        raise InputError("request is not a single .npy array")
    return array


def _from_npz(data: bytes) -> dict[str, np.ndarray]:
    import zipfile

    try:
        with np.load(io.BytesIO(data), allow_pickle=False) as archive:
            return {key: archive[key] for key in archive.files}
    except (ValueError, OSError, EOFError, zipfile.BadZipFile) as e:
        raise InputError(f"request is not a valid .npz file: {e}") from e


# --- checking against the signature -------------------------------------------------------------


def _castable(src: np.dtype, dst: np.dtype) -> bool:
    if src == dst:
        return True
    if dst.kind == "f":  # ints, bools and wider floats may become floats (documented)
        return src.kind in "biuf"
    if dst.kind in "iu":
        return src.kind in "biu" and np.can_cast(src, dst, "same_kind")
    if dst.kind == "U":
        return src.kind == "U"
    return dst.kind == "b" and src.kind == "b"


def _convert(array: np.ndarray, want: np.dtype, spec: TensorSpec) -> np.ndarray:
    """``array`` as ``want`` (a cast ``_castable`` allowed); raises InputError when an integer is
    beyond the range of a narrower integer type (which a plain cast would silently wrap). A
    finite float beyond a narrower float's range becomes infinity here, without a warning;
    ``InputChecker`` tells it from a request that held infinity when the finiteness check fails."""
    with np.errstate(over="ignore", invalid="ignore"):
        converted = array.astype(want)
    wraps = want.kind in "iu" and not np.can_cast(array.dtype, want)
    if wraps and not np.array_equal(converted, array):
        raise _beyond(array, spec)
    return converted


def _beyond(array: np.ndarray, spec: TensorSpec) -> InputError:
    return InputError(
        f"{spec.name}: a value of this {array.dtype} request is beyond the range of "
        f"{spec.dtype}, the model's input type",
        "dtype",
    )


class _Plan:
    """Everything about one input spec that ``InputChecker`` needs per call, worked out once."""

    __slots__ = (
        "dtype",
        "expand",
        "fixed",
        "floating",
        "high_byte",
        "name",
        "rank",
        "spec",
        "text",
    )

    def __init__(self, spec: TensorSpec) -> None:
        self.spec = spec
        self.name = spec.name
        self.dtype = numpy_dtype(spec.dtype)
        self.rank = len(spec.shape)
        # one row given where a batch is expected: only when the batch axis is dynamic and the
        # row itself has at least one axis
        self.expand = self.rank >= 2 and spec.shape[0] is None
        self.fixed = tuple((axis, dim) for axis, dim in enumerate(spec.shape) if dim is not None)
        self.floating = self.dtype.kind == "f"
        self.text = _shape_text(spec.shape)
        self.high_byte = _high_byte(self.dtype)


# --- finiteness ---------------------------------------------------------------------------------

_MAX_SCANNED = 1 << 16  # elements; larger requests take the elementwise check


def _high_byte(dtype: np.dtype, byteorder: str = sys.byteorder) -> Optional[int]:
    """Where the most significant byte of each float32 or float64 element sits among its bytes
    (in the given byte order); None for other types, which take the elementwise check."""
    if dtype not in (np.dtype(np.float32), np.dtype(np.float64)):
        return None
    return dtype.itemsize - 1 if byteorder == "little" else 0


def _all_finite(array: np.ndarray, plan: _Plan) -> bool:
    """True when no element of the floating-point ``array`` (of ``plan``'s dtype) is NaN or
    infinite.

    The most significant byte of an IEEE float holds its sign and the top 7 bits of its exponent,
    so it is 0x7f or 0xff in every NaN and infinity (whose exponent bits are all ones). Up to
    ``_MAX_SCANNED`` float32 or float64 elements are first scanned for such bytes; when none has
    one, every element is finite. That takes a copy of the bytes and two byte searches, a
    fraction of the cost of ``isfinite(...).all()`` on small requests, and no floating-point
    operation, so it raises no flag and no warning whatever numpy's error settings. Any other
    request takes the elementwise check: one holding a NaN, an infinity or a value near the
    type's largest (2**127 and up in float32, 2**1008 in float64), another type, a large one.
    """
    offset = plan.high_byte
    if offset is not None and array.size <= _MAX_SCANNED:
        high = array.tobytes()[offset :: array.itemsize]
        if b"\x7f" not in high and b"\xff" not in high:
            return True
    return bool(np.isfinite(array).all())


class InputChecker:
    """Checks and converts requests for one signature; built once per loaded model."""

    def __init__(self, specs: Sequence[TensorSpec], limits: InputLimits = DEFAULT_INPUT_LIMITS):
        self.specs = tuple(specs)
        self.limits = limits
        self._plans = tuple(_Plan(s) for s in self.specs)
        self._names = frozenset(s.name for s in self.specs)
        self._max_rows = limits.max_rows

    def check(self, feeds: Mapping[str, Any]) -> dict[str, np.ndarray]:
        """Return arrays ready for the backend; raises InputError explaining what was expected."""
        # as many feeds as inputs and every input among them: the same names, found without
        # building sets on every call
        if len(feeds) != len(self._plans):
            self._names_error(feeds)
        out = {}
        for plan in self._plans:
            try:
                value = feeds[plan.name]
            except KeyError:
                self._names_error(feeds)
            out[plan.name] = self._one(plan, value)
        return out

    def _names_error(self, feeds: Mapping[str, Any]) -> NoReturn:
        missing = sorted(self._names - set(feeds))
        extra = sorted(set(feeds) - self._names)
        parts = []
        if missing:
            parts.append(f"missing input(s) {', '.join(missing)}")
        if extra:
            parts.append(f"unknown input(s) {', '.join(map(str, extra))}")
        raise InputError(
            f"{'; '.join(parts)} (the model takes {', '.join(sorted(self._names))})", "names"
        )

    def _one(self, plan: _Plan, value: Any) -> np.ndarray:
        array = value if isinstance(value, np.ndarray) else _to_array(value, plan.name)
        source = array
        if array.dtype is not plan.dtype and array.dtype != plan.dtype:
            array = _cast(array, plan)
        shape = array.shape
        if len(shape) != plan.rank:
            array = _expanded(array, plan)
            shape = array.shape
        for axis, dim in plan.fixed:
            if shape[axis] != dim:
                raise InputError(
                    f"{plan.name}: dimension {axis} must be {dim} {plan.text}, got {shape}",
                    "shape",
                )
        if shape and shape[0] > self._max_rows:
            raise InputError(f"{plan.name}: batch of {shape[0]} > {self._max_rows}", "batch")
        if plan.floating and not _all_finite(array, plan):
            if source is not array and bool(np.isfinite(source).all()):
                raise _beyond(source, plan.spec)  # finite in the request, infinite after the cast
            raise InputError(f"{plan.name}: contains NaN or infinity", "non-finite")
        return array


def _cast(array: np.ndarray, plan: _Plan) -> np.ndarray:
    """``array`` converted to the input's dtype, or InputError when that is not allowed."""
    if not _castable(array.dtype, plan.dtype):
        raise InputError(f"{plan.name}: expected {plan.spec.dtype}, got {array.dtype}", "dtype")
    return _convert(array, plan.dtype, plan.spec)


def _expanded(array: np.ndarray, plan: _Plan) -> np.ndarray:
    """A single row given where a batch is expected, as a batch of one; InputError for any other
    rank."""
    if not (plan.expand and array.ndim == plan.rank - 1):
        raise InputError(
            f"{plan.name}: expected rank {plan.rank} {plan.text}, got {array.shape}", "shape"
        )
    return array[np.newaxis, ...]


def _shape_text(shape: Sequence[Optional[int]]) -> str:
    return "[" + ", ".join("N" if d is None else str(d) for d in shape) + "]"
