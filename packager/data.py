"""Reading DATA and LABELS files (``.npy``, ``.npz``, ``.csv`` with a header row) on the host."""

from __future__ import annotations

import csv
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import numpy as np

from runtime.errors import UsageError

MAX_DATA_BYTES = 2 * 1024**3


@dataclass(frozen=True)
class Dataset:
    """Arrays keyed by input name (``None`` key: a single unnamed array), plus CSV column names."""

    arrays: dict[Optional[str], np.ndarray]
    columns: Optional[tuple[str, ...]] = None

    def single(self) -> np.ndarray:
        if len(self.arrays) != 1:
            raise UsageError("expected one array, found several (an .npz with several keys)")
        return next(iter(self.arrays.values()))

    @property
    def rows(self) -> int:
        return int(next(iter(self.arrays.values())).shape[0])


def load_data(path: Path) -> Dataset:
    """Read a data file; raises UsageError with the reason when it cannot."""
    if not path.is_file():
        raise UsageError(f"no such data file: {path}")
    if path.stat().st_size > MAX_DATA_BYTES:
        raise UsageError(f"{path}: larger than {MAX_DATA_BYTES} bytes")
    suffix = path.suffix.lower()
    try:
        if suffix == ".npy":
            return Dataset({None: np.load(path, allow_pickle=False)})
        if suffix == ".npz":
            with np.load(path, allow_pickle=False) as archive:
                return Dataset({k: archive[k] for k in archive.files})
        if suffix == ".csv":
            return _load_csv(path)
    except (ValueError, OSError, zipfile.BadZipFile) as e:
        raise UsageError(f"cannot read {path}: {e}") from e
    raise UsageError(f"{path}: data must be .npy, .npz or .csv (with a header row)")


def _load_csv(path: Path) -> Dataset:
    with path.open(newline="", encoding="utf-8-sig") as f:
        rows = [r for r in csv.reader(f) if r]
    if len(rows) < 2:
        raise UsageError(f"{path}: needs a header row and at least one data row")
    header = tuple(h.strip() for h in rows[0])
    try:
        values = np.array(
            [[float(x) if x.strip() else np.nan for x in r] for r in rows[1:]], dtype=np.float64
        )
    except ValueError as e:
        raise UsageError(f"{path}: values must be numeric ({e})") from e
    if values.ndim != 2 or values.shape[1] != len(header):
        raise UsageError(f"{path}: every row must have {len(header)} fields")
    return Dataset({None: values}, header)
