"""Does the packaged model still give the original's answers? Measured on the sample."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Optional

import numpy as np

from packager.convert import Arrays
from runtime.errors import ParityError


@dataclass(frozen=True)
class ParityReport:
    rows: int
    max_abs_diff: float
    mean_abs_diff: float
    label_agreement: Optional[float]
    tolerance: float
    min_label_agreement: float

    @property
    def passed(self) -> bool:
        labels_ok = self.label_agreement is None or self.label_agreement >= self.min_label_agreement
        return self.max_abs_diff <= self.tolerance and labels_ok

    def to_dict(self) -> dict[str, Any]:
        return {
            "rows": self.rows,
            "max_abs_diff": self.max_abs_diff,
            "mean_abs_diff": self.mean_abs_diff,
            "label_agreement": self.label_agreement,
            "tolerance": self.tolerance,
            "min_label_agreement": self.min_label_agreement,
            "passed": self.passed,
        }

    def describe(self) -> str:
        labels = ""
        if self.label_agreement is not None:
            need = self.min_label_agreement
            labels = f", label agreement {self.label_agreement:.2%} (need {need:.2%})"
        return (
            f"max |difference| {self.max_abs_diff:.3g} (tolerance {self.tolerance:g}), "
            f"mean {self.mean_abs_diff:.3g}{labels} on {self.rows} sample rows"
        )


def measure(
    original: Arrays,
    packaged: Arrays,
    label_output: Optional[str],
    tolerance: float,
    min_label_agreement: float,
) -> ParityReport:
    """Compare outputs by name; label outputs by agreement, numeric outputs by abs difference."""
    diffs: list[np.ndarray] = []
    agreement = None
    rows = 0
    for name, want in original.items():
        got = packaged.get(name)
        if got is None:
            raise ParityError(f"the packaged model has no output {name!r}")
        rows = max(rows, int(want.shape[0]) if want.ndim else 1)
        if name == label_output or want.dtype.kind not in "fiub":
            agreement = float(np.mean(np.asarray(got).ravel() == np.asarray(want).ravel()))
            continue
        if got.shape != want.shape:
            got = got.reshape(want.shape) if got.size == want.size else got
        if got.shape != want.shape:
            raise ParityError(f"output {name!r}: shape {got.shape}, original {want.shape}")
        diffs.append(np.abs(got.astype(np.float64) - want.astype(np.float64)).ravel())
    allv = np.concatenate(diffs) if diffs else np.zeros(1)
    return ParityReport(
        rows, float(allv.max()), float(allv.mean()), agreement, tolerance, min_label_agreement
    )


def check(report: ParityReport) -> None:
    if not report.passed:
        raise ParityError(f"the converted model disagrees with the original: {report.describe()}")
