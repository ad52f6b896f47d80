"""Golden vectors (``selftest.npz``), written deterministically."""

from __future__ import annotations

import io
import zipfile

import numpy as np

from packager.convert import Arrays
from runtime.errors import UsageError

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
    """The first ``rows`` rows with no NaN or infinity in any floating-point input.

    A device refuses non-finite inputs, so a self-test on such rows would fail every install (a
    sample for a Pipeline with an imputer has missing values on purpose). Raises UsageError when
    no row is complete.
    """
    n = max((int(v.shape[0]) for v in arrays.values() if v.ndim), default=1)
    complete = np.ones(n, dtype=bool)
    for v in arrays.values():
        if v.ndim and v.shape[0] == n and v.dtype.kind == "f":
            complete &= np.isfinite(v.reshape(n, -1)).all(axis=1)
    if not complete.any():
        raise UsageError("every sample row has NaN or infinity; the device self-test needs some")
    keep = np.flatnonzero(complete)[:rows]
    return {k: v[keep] if v.ndim and v.shape[0] == n else v for k, v in arrays.items()}
