"""The reference data profile: what the training-time data looked like, per input feature.

Computed from the sample (and validation) data at build time, stored in the manifest, shown by
``inspect``, and used on the device as the baseline for drift scores: quantile bin edges with
their histogram for numeric features, category frequencies for categorical ones.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Optional, Sequence

import numpy as np

Arrays = dict[str, np.ndarray]

BINS = 10
MIN_ROWS = 50
"""Below this many rows, quantile bins are too coarse to judge drift by: the build warns."""
MAX_CATEGORIES = 20
"""An integer-valued column with at most this many distinct values is treated as categorical."""


@dataclass(frozen=True)
class DataProfile:
    profile: dict[str, Any]
    warnings: tuple[str, ...]


def _feature_columns(
    inputs: Arrays, columns: Optional[Sequence[str]]
) -> list[tuple[str, str, int, np.ndarray]]:
    """(feature name, input name, column index, values) for every profiled column."""
    found = []
    for name, array in sorted(inputs.items()):
        if array.dtype.kind not in "fiub" or array.ndim not in (1, 2):
            continue
        table = array.reshape(-1, 1) if array.ndim == 1 else array
        named = columns is not None and len(inputs) == 1 and len(columns) == table.shape[1]
        for j in range(table.shape[1]):
            label = columns[j] if named and columns else f"{name}[{j}]"
            found.append((label, name, j, table[:, j].astype(np.float64)))
    return found


def _numeric(values: np.ndarray) -> dict[str, Any]:
    edges = np.unique(np.quantile(values, np.linspace(0, 1, BINS + 1)))
    hist = np.histogram(values, bins=edges)[0] if edges.size > 1 else np.array([values.size])
    return {
        "kind": "numeric",
        "min": float(values.min()),
        "max": float(values.max()),
        "mean": float(values.mean()),
        "std": float(values.std()),
        "bin_edges": [float(e) for e in edges],
        "histogram": [int(c) for c in hist],
    }


def _categorical(values: np.ndarray) -> dict[str, Any]:
    levels, counts = np.unique(values, return_counts=True)
    return {
        "kind": "categorical",
        "min": float(levels.min()),
        "max": float(levels.max()),
        "frequencies": {str(int(v)): int(c) for v, c in zip(levels, counts)},
    }


def profile_data(inputs: Arrays, columns: Optional[Sequence[str]] = None) -> DataProfile:
    """Profile every 1-D or 2-D numeric input column; warn about data unfit to profile."""
    warnings: list[str] = []
    features: dict[str, Any] = {}
    rows = min((int(a.shape[0]) for a in inputs.values() if a.ndim), default=0)
    for label, input_name, index, column in _feature_columns(inputs, columns):
        finite = column[np.isfinite(column)]
        entry: dict[str, Any] = {
            "input": input_name,
            "index": index,
            "count": int(finite.size),
            "missing": int(column.size - finite.size),
        }
        if entry["missing"]:
            warnings.append(f"feature {label}: {entry['missing']} missing (NaN) value(s)")
        if finite.size:
            levels = np.unique(finite)
            integral = bool(np.all(finite == np.round(finite)))
            categorical = integral and 1 < levels.size <= MAX_CATEGORIES
            entry.update(_categorical(finite) if categorical else _numeric(finite))
            if levels.size == 1:
                warnings.append(f"feature {label}: constant ({levels[0]:g}) in the sample")
        features[label] = entry
    for name, array in sorted(inputs.items()):
        if array.ndim == 2 and array.shape[0] > 1:
            duplicates = array.shape[0] - np.unique(array, axis=0).shape[0]
            if duplicates:
                warnings.append(f"input {name}: {duplicates} duplicated row(s) in the sample")
    if 0 < rows < MIN_ROWS:
        warnings.append(
            f"the sample has {rows} rows; at least {MIN_ROWS} give a usable drift baseline"
        )
    return DataProfile({"rows": rows, "bins": BINS, "features": features}, tuple(warnings))
