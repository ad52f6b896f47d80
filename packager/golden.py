"""Golden vectors (``selftest.npz``) and the reference data profile, written deterministically."""

from __future__ import annotations

import io
import zipfile
from typing import Any, Optional, Sequence

import numpy as np

from packager.convert import Arrays

GOLDEN_ROWS = 32
_EPOCH = (1980, 1, 1, 0, 0, 0)


def golden_npz(inputs: Arrays, outputs: Arrays) -> bytes:
    """An .npz (readable with ``np.load(allow_pickle=False)``) with fixed timestamps and order."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_STORED) as archive:
        for prefix, arrays in (("in/", inputs), ("out/", outputs)):
            for name in sorted(arrays):
                array = np.ascontiguousarray(arrays[name])
                if array.dtype == object:
                    array = array.astype(np.str_)
                info = zipfile.ZipInfo(f"{prefix}{name}.npy", date_time=_EPOCH)
                info.external_attr = 0o644 << 16
                info.create_system = 3  # Unix, whatever system builds it
                member = io.BytesIO()
                np.lib.format.write_array(member, array, allow_pickle=False)
                archive.writestr(info, member.getvalue())
    return buffer.getvalue()


def head(arrays: Arrays, rows: int = GOLDEN_ROWS) -> Arrays:
    return {k: v[:rows] if v.ndim else v for k, v in arrays.items()}


def reference_profile(inputs: Arrays, columns: Optional[Sequence[str]] = None) -> dict[str, Any]:
    """Per-feature summary of the sample for 2-D numeric inputs (the drift baseline)."""
    features: dict[str, Any] = {}
    for name, array in sorted(inputs.items()):
        if array.ndim != 2 or array.dtype.kind not in "fiu":
            continue
        values = array.astype(np.float64)
        for j in range(values.shape[1]):
            column = values[:, j]
            finite = column[np.isfinite(column)]
            key = columns[j] if columns and len(columns) == values.shape[1] else f"{name}[{j}]"
            features[key] = _summary(finite, int(column.size - finite.size), j, name)
    return {"rows": _rows(inputs), "features": features}


def _summary(finite: np.ndarray, missing: int, index: int, input_name: str) -> dict[str, Any]:
    if not finite.size:
        return {"input": input_name, "index": index, "count": 0, "missing": missing}
    edges = np.unique(np.quantile(finite, np.linspace(0, 1, 11)))
    hist = np.histogram(finite, bins=edges)[0] if edges.size > 1 else np.array([finite.size])
    return {
        "input": input_name,
        "index": index,
        "count": int(finite.size),
        "missing": missing,
        "min": float(finite.min()),
        "max": float(finite.max()),
        "mean": float(finite.mean()),
        "std": float(finite.std()),
        "bin_edges": [float(e) for e in edges],
        "histogram": [int(c) for c in hist],
    }


def _rows(inputs: Arrays) -> int:
    first = next(iter(inputs.values()), None)
    return int(first.shape[0]) if first is not None and first.ndim else 0
