"""Golden vectors (``selftest.npz``), written deterministically."""

from __future__ import annotations

import io
import zipfile

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
