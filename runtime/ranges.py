"""Input value ranges against the bundle's reference profile (docs/bundle-format.md §2.8).

The reference profile records, per feature (one column of a 1-D or 2-D numeric input), what the
training-time data looked like. This module reads it strictly (:func:`reference_features`) and
checks requests against it (:class:`RangeChecker`): a numeric value outside the reference
``[min, max]``, or a categorical value never seen in the reference data, is *out of range*.

Out-of-range values are counted and reported (:class:`RangeReport`), not rejected, unless the
bundle's ``input_policy.out_of_range`` is ``"reject"``: then the request fails with an
:class:`InputError` naming the feature, the value and the expected range. The checker is built once
per loaded model; a check on a request that is in range costs a few vectorized comparisons.
"""

from __future__ import annotations

from dataclasses import dataclass
from math import isfinite
from typing import Any, Mapping, Optional, Sequence

import numpy as np

from runtime.backends.base import numpy_dtype
from runtime.errors import InputError, ModelError
from runtime.manifest import Manifest, TensorSpec

KINDS = ("numeric", "categorical")
MAX_LEVEL = 2**53
"""Largest magnitude of a categorical level: every such integer is exact in float64."""
MAX_TABLE_CELLS = 1 << 16
"""Largest lookup table (categorical columns by level span) built for the unseen-level check;
wider spans are checked column by column."""


@dataclass(frozen=True)
class ReferenceFeature:
    """One feature of the reference profile: which input column it is and what it held.

    ``kind`` is ``None`` when the reference data held no finite value for it: such a feature has
    no range and no baseline.
    """

    label: str
    input: str
    index: int
    kind: Optional[str] = None
    low: float = -np.inf
    high: float = np.inf
    mean: Optional[float] = None
    frequencies: tuple[tuple[int, int], ...] = ()
    """(level, count) of a categorical feature, by level."""

    @property
    def levels(self) -> tuple[int, ...]:
        return tuple(level for level, _ in self.frequencies)

    @property
    def baseline(self) -> Optional[float]:
        """The typical value: the mean of a numeric feature, the most frequent level of a
        categorical one (the smallest such level on a tie), ``None`` without reference data."""
        if self.kind == "numeric":
            return self.mean
        if self.kind == "categorical":
            return float(max(self.frequencies, key=lambda lc: (lc[1], -lc[0]))[0])
        return None


def _number(entry: Mapping[str, Any], key: str, where: str) -> float:
    value = entry.get(key)
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not isfinite(value):
        raise ModelError(f"{where}.{key}: expected a finite number")
    return float(value)


def _feature(label: str, entry: Any, specs: Mapping[str, TensorSpec]) -> ReferenceFeature:
    where = f"reference_profile.features[{label!r}]"
    if not isinstance(entry, dict):
        raise ModelError(f"{where}: expected an object")
    name, index = entry.get("input"), entry.get("index")
    if not isinstance(name, str) or name not in specs:
        raise ModelError(f"{where}.input: {name!r} is not an input of the model")
    if isinstance(index, bool) or not isinstance(index, int) or index < 0:
        raise ModelError(f"{where}.index: expected a non-negative integer")
    shape = specs[name].shape
    columns = shape[1] if len(shape) == 2 else 1
    if len(shape) not in (1, 2) or (columns is not None and index >= columns):
        raise ModelError(f"{where}.index: column {index} does not exist in input {name!r}")
    kind = entry.get("kind")
    if kind is None and "min" not in entry:
        return ReferenceFeature(label, name, index)
    if kind not in KINDS:
        raise ModelError(f"{where}.kind: expected one of {', '.join(KINDS)}")
    low, high = _number(entry, "min", where), _number(entry, "max", where)
    if low > high:
        raise ModelError(f"{where}: min is above max")
    if kind == "numeric":
        return ReferenceFeature(label, name, index, kind, low, high, _number(entry, "mean", where))
    raw = entry.get("frequencies")
    if not isinstance(raw, dict) or not raw:
        raise ModelError(f"{where}.frequencies: expected a non-empty object")
    frequencies = []
    for key, count in raw.items():
        try:
            level = int(key)
        except (TypeError, ValueError) as e:
            raise ModelError(f"{where}.frequencies: {key!r} is not an integer level") from e
        if abs(level) > MAX_LEVEL or not low <= level <= high:
            raise ModelError(f"{where}.frequencies: level {level} is outside [min, max]")
        if isinstance(count, bool) or not isinstance(count, int) or count < 0:
            raise ModelError(f"{where}.frequencies[{key!r}]: expected a count")
        frequencies.append((level, count))
    frequencies.sort()
    # the range of a categorical feature is that of its levels
    low, high = float(frequencies[0][0]), float(frequencies[-1][0])
    return ReferenceFeature(label, name, index, kind, low, high, None, tuple(frequencies))


def reference_features(
    profile: Mapping[str, Any], specs: Sequence[TensorSpec]
) -> tuple[ReferenceFeature, ...]:
    """The features of a manifest's ``reference_profile``, checked against the model's inputs.

    An empty profile has no features. Raises ModelError naming the field when a feature is
    malformed, names an input or column the model does not have, or repeats another's column.
    """
    raw = profile.get("features", {})
    if not isinstance(raw, dict):
        raise ModelError("reference_profile.features: expected an object")
    by_name = {s.name: s for s in specs}
    found = tuple(_feature(str(label), entry, by_name) for label, entry in raw.items())
    columns = [(f.input, f.index) for f in found]
    if len(set(columns)) != len(columns):
        raise ModelError("reference_profile.features: two features name the same input column")
    return found


@dataclass(frozen=True)
class RangeFlag:
    """One feature with out-of-range values in a request: how many, and the first of them."""

    feature: str
    kind: str
    count: int
    row: int
    value: float
    low: float
    high: float
    levels: tuple[int, ...] = ()

    def expected(self) -> str:
        if self.kind == "categorical":
            shown = ", ".join(map(str, self.levels[:10])) + (", …" if len(self.levels) > 10 else "")
            return f"one of the reference levels {{{shown}}}"
        return f"within the reference range [{self.low:g}, {self.high:g}]"

    def describe(self) -> str:
        return f"{self.feature}: {self.count} value(s) not {self.expected()}"

    def to_dict(self) -> dict[str, Any]:
        doc: dict[str, Any] = {"count": self.count, "kind": self.kind, "first_row": self.row}
        doc.update(first_value=self.value, min=self.low, max=self.high)
        if self.levels:
            doc["levels"] = list(self.levels)
        return doc


@dataclass(frozen=True)
class RangeReport:
    """The out-of-range features of one request (empty when every value was in range)."""

    flags: tuple[RangeFlag, ...] = ()

    def __bool__(self) -> bool:
        return bool(self.flags)

    @property
    def counts(self) -> dict[str, int]:
        """Out-of-range values per feature label."""
        return {f.feature: f.count for f in self.flags}

    def summary(self) -> str:
        """One line naming each out-of-range feature, its count and the expected range."""
        return "; ".join(f.describe() for f in self.flags)


IN_RANGE = RangeReport()


class _InputRanges:
    """The ranges of one input's profiled columns, as vectors for whole-batch comparisons."""

    def __init__(self, name: str, dtype: np.dtype, features: Sequence[ReferenceFeature]) -> None:
        self.name = name
        self.dtype = dtype
        self.features = tuple(features)
        width = max(f.index for f in features) + 1
        self.width = width
        self.by_column: dict[int, ReferenceFeature] = {f.index: f for f in features}
        low, high = np.full(width, -np.inf), np.full(width, np.inf)
        for f in features:
            low[f.index], high[f.index] = f.low, f.high
        categorical = np.zeros(width, dtype=bool)
        categorical[[f.index for f in features if f.kind == "categorical"]] = True
        self.low, self.high = _bounds(low, high, dtype, categorical)
        self.floating = dtype.kind == "f"
        self._categorical([f for f in features if f.kind == "categorical"])

    def _categorical(self, cats: Sequence[ReferenceFeature]) -> None:
        """Precompute the unseen-level check of the categorical columns.

        A value ``v`` of categorical column ``c`` that is within the column's range is looked up
        as ``seen[v - shift[c]]``, one flat table holding every column's levels side by side;
        only columns whose levels have gaps need the table, and only float inputs can hold a
        value that is not an integer.
        """
        dense = all(len(f.levels) == f.levels[-1] - f.levels[0] + 1 for f in cats)
        span = max((f.levels[-1] - f.levels[0] + 1 for f in cats), default=0)
        self.cat_columns = np.array([f.index for f in cats], dtype=np.intp)
        self.cat_levels = tuple(np.array(f.levels, dtype=np.float64) for f in cats)
        self.cat_shift = np.array(
            [f.levels[0] - c * span for c, f in enumerate(cats)], dtype=np.float64
        )
        self.cat_span = span
        self.seen: Optional[np.ndarray] = None
        if not dense and len(cats) * span <= MAX_TABLE_CELLS:
            self.seen = np.zeros(len(cats) * span, dtype=bool)
            for c, f in enumerate(cats):
                self.seen[c * span + np.array(f.levels) - f.levels[0]] = True
        self.cat_gaps = not dense
        self.cat_check = bool(cats) and (self.floating or not dense)

    def suspect(self, x: np.ndarray) -> bool:
        """True when some value of ``x`` (rows by columns, the profiled width) may be out of
        range; False only when every value is in range."""
        # two comparisons over the whole batch: faster than per-column minima and maxima at
        # every batch size measured (1 to 10 000 rows)
        if np.count_nonzero((x < self.low) | (x > self.high)):
            return True
        if not self.cat_check:
            return False
        # every value is within its column's range here, so every index is inside the table
        shifted = x.take(self.cat_columns, axis=1) - self.cat_shift
        index = shifted.astype(np.intp)
        if self.floating and np.count_nonzero(shifted != index):
            return True
        if self.seen is not None:
            return bool(np.count_nonzero(self.seen.take(index, mode="clip")) != index.size)
        return self.cat_gaps and bool(self._unseen(x).any())

    def _unseen(self, x: np.ndarray) -> np.ndarray:
        """rows by categorical columns: a value never seen in the reference data (a level in a
        gap, a fraction, or outside the range)."""
        shifted = x.take(self.cat_columns, axis=1) - self.cat_shift
        unseen: np.ndarray = (
            shifted != np.floor(shifted) if self.floating else np.zeros(shifted.shape, bool)
        )
        if self.seen is not None:
            base = np.arange(len(self.cat_columns)) * self.cat_span
            index = np.clip(shifted, base, base + self.cat_span - 1).astype(np.intp)
            unseen |= ~self.seen.take(index)
        elif self.cat_gaps:
            values = x.take(self.cat_columns, axis=1)
            for c, levels in enumerate(self.cat_levels):
                unseen[:, c] |= ~np.isin(values[:, c], levels)
        return unseen

    def flags(self, x: np.ndarray) -> list[RangeFlag]:
        """Every out-of-range feature of ``x`` (rows by the profiled width), by column."""
        bad = (x < self.low) | (x > self.high)
        if len(self.cat_columns):
            bad[:, self.cat_columns] |= self._unseen(x)
        counts = bad.sum(axis=0)
        found = []
        for column in np.flatnonzero(counts):
            feature = self.by_column.get(int(column))
            if feature is None or feature.kind is None:
                continue
            row = int(np.argmax(bad[:, column]))
            found.append(
                RangeFlag(
                    feature.label,
                    feature.kind,
                    int(counts[column]),
                    row,
                    float(x[row, column]),
                    feature.low,
                    feature.high,
                    feature.levels,
                )
            )
        return found

    def narrowed(self, width: int) -> Optional[_InputRanges]:
        """The checks for a request narrower than the profile (a dynamic column count)."""
        kept = [f for f in self.features if f.index < width]
        if not kept:
            return None
        return _InputRanges(self.name, self.dtype, kept)


def _bounds(
    low: np.ndarray, high: np.ndarray, dtype: np.dtype, inward: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """The bounds in the input's own float type (so a check casts nothing per request).

    Numeric bounds are rounded outward: comparing in the input's type never flags a value the
    float64 bounds admit. Categorical bounds (the columns in ``inward``) are rounded inward: a
    value that passes is within the levels' range exactly, which the level lookup relies on.
    """
    if dtype.kind != "f":
        return low, high
    down, up = dtype.type(-np.inf), dtype.type(np.inf)
    with np.errstate(over="ignore"):
        lo, hi = low.astype(dtype), high.astype(dtype)
    lo_wide, hi_wide = lo.astype(np.float64), hi.astype(np.float64)
    lo = np.where(~inward & (lo_wide > low), np.nextafter(lo, down), lo)
    lo = np.where(inward & (lo_wide < low), np.nextafter(lo, up), lo)
    hi = np.where(~inward & (hi_wide < high), np.nextafter(hi, up), hi)
    hi = np.where(inward & (hi_wide > high), np.nextafter(hi, down), hi)
    return lo.astype(dtype), hi.astype(dtype)


class RangeChecker:
    """Checks requests against the reference ranges; built once per loaded model.

    ``reject``: raise instead of report (the bundle's ``input_policy.out_of_range``).
    """

    def __init__(
        self,
        features: Sequence[ReferenceFeature],
        specs: Sequence[TensorSpec],
        reject: bool = False,
    ) -> None:
        self.features = tuple(features)
        self.reject = reject
        ranged = [f for f in self.features if f.kind is not None]
        self._inputs = tuple(
            _InputRanges(
                spec.name, numpy_dtype(spec.dtype), [f for f in ranged if f.input == spec.name]
            )
            for spec in specs
            if any(f.input == spec.name for f in ranged)
        )

    @classmethod
    def from_manifest(cls, manifest: Manifest) -> RangeChecker:
        """The checker for a bundle; raises ModelError when its reference profile is malformed."""
        specs = manifest.model.inputs
        features = reference_features(manifest.reference_profile, specs)
        return cls(features, specs, manifest.out_of_range_policy == "reject")

    def check(self, arrays: Mapping[str, np.ndarray]) -> RangeReport:
        """Report the out-of-range values of ``arrays``, inputs already checked and converted by
        ``InputChecker``. Raises InputError, naming the first such value, when rejecting."""
        flags: list[RangeFlag] = []
        for ranges in self._inputs:
            array = arrays[ranges.name]
            x = array.reshape(-1, 1) if array.ndim == 1 else array
            if x.ndim != 2 or x.shape[0] == 0:
                continue
            checks: Optional[_InputRanges] = ranges
            if x.shape[1] > ranges.width:
                x = x[:, : ranges.width]
            elif x.shape[1] < ranges.width:
                checks = ranges.narrowed(x.shape[1])
            if checks is not None and checks.suspect(x):
                flags.extend(checks.flags(x))
        if not flags:
            return IN_RANGE
        if self.reject:
            first = flags[0]
            raise InputError(
                f"{first.feature}: value {first.value:g} (row {first.row}) is not "
                f"{first.expected()}; this model rejects out-of-range inputs"
                + (f" ({len(flags) - 1} more feature(s) out of range)" if len(flags) > 1 else ""),
                "range",
            )
        return RangeReport(tuple(flags))
