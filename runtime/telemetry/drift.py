"""Drift scores per input feature against the bundle's reference profile (docs/telemetry.md,
docs/adr/0009-telemetry-drift-and-spool.md).

The reference profile (``packager/reference.py`` writes it, ``runtime/ranges.py`` reads its
features) keeps, for a numeric feature, quantile ``bin_edges`` and the reference ``histogram``
over them; for a categorical feature, the count of each level. A window's values are binned the
same way and compared with two scores:

- **PSI** (population stability index), ``Σ (q - p) · ln(q / p)``, the score model-monitoring
  rules of thumb are written for (< 0.1 stable, 0.1 to 0.25 moderate, > 0.25 significant). Its
  logarithm needs every bin non-empty on both sides, so both histograms are smoothed by adding
  :data:`SMOOTHING` (½, the Jeffreys prior) to every bin before normalizing.
- **Jensen-Shannon distance**, the square root of the JS divergence with base-2 logarithms: in
  [0, 1], symmetric, defined with empty bins (so computed on the raw proportions, unsmoothed).

Numeric values outside the reference edges fall into the end bins (as they would have had they
been in the reference data); categorical values not among the reference levels go to an extra
"unseen" bucket whose reference count is 0. Pure numpy; nothing here runs on the request path.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from typing import Any, Mapping, Optional, Sequence

import numpy as np

from runtime.errors import EdgeshipError
from runtime.manifest import TensorSpec
from runtime.ranges import reference_features

log = logging.getLogger(__name__)

SMOOTHING = 0.5
"""Pseudo-count added to every bin of both histograms before PSI (Jeffreys prior)."""
MAX_BINS = 1024
"""Most bins (numeric) or levels (categorical) a feature's baseline may have."""


@dataclass(frozen=True)
class DriftScore:
    """One feature's drift in one window: PSI, JS distance, and how many values they stand on
    (``n``; reported once per model as ``drift_rows``, the scores alone per feature)."""

    psi: float
    js: float
    n: int

    def to_dict(self) -> dict[str, Any]:
        return {"psi": round(self.psi, 6), "js": round(self.js, 6)}


@dataclass(frozen=True)
class FeatureBaseline:
    """The reference distribution of one feature (one column of one input).

    ``bounds`` are the numeric bin edges (k + 1 of them for k bins), ``levels`` the categorical
    levels (ascending); ``reference`` holds the reference counts per bin, for a categorical
    feature with one more bin (the unseen bucket, count 0) at the end.
    """

    label: str
    input: str
    index: int
    kind: str
    reference: np.ndarray
    bounds: Optional[np.ndarray] = None
    levels: Optional[np.ndarray] = None

    def counts(self, values: np.ndarray) -> np.ndarray:
        """Bin finite ``values`` (float64, 1-D) like the reference; returns counts per bin."""
        bins = self.reference.size
        if self.kind == "numeric":
            assert self.bounds is not None
            # interior edges only: below the first edge → bin 0, above the last → bin k-1,
            # and a value on an interior edge goes right, as in numpy.histogram
            index = np.searchsorted(self.bounds[1:-1], values, side="right")
        else:
            assert self.levels is not None
            pos = np.minimum(np.searchsorted(self.levels, values), self.levels.size - 1)
            index = np.where(self.levels[pos] == values, pos, self.levels.size)
        return np.bincount(index, minlength=bins).astype(np.float64)

    def score(self, values: np.ndarray) -> Optional[DriftScore]:
        """Drift of ``values`` (NaN and infinities ignored); ``None`` when none is finite."""
        finite = values[np.isfinite(values)]
        if finite.size == 0:
            return None
        observed = self.counts(finite)
        return DriftScore(
            psi(self.reference, observed), js_distance(self.reference, observed), int(finite.size)
        )


def psi(expected: np.ndarray, actual: np.ndarray, smoothing: float = SMOOTHING) -> float:
    """Population stability index of ``actual`` counts against ``expected`` counts (same bins),
    after adding ``smoothing`` to every bin of both."""
    p = _proportions(np.asarray(expected, dtype=np.float64) + smoothing)
    q = _proportions(np.asarray(actual, dtype=np.float64) + smoothing)
    return float(np.sum((q - p) * np.log(q / p)))


def js_distance(expected: np.ndarray, actual: np.ndarray) -> float:
    """Jensen-Shannon distance (base 2, in [0, 1]) between two histograms over the same bins."""
    p = _proportions(np.asarray(expected, dtype=np.float64))
    q = _proportions(np.asarray(actual, dtype=np.float64))
    m = (p + q) / 2
    divergence = (_kl(p, m) + _kl(q, m)) / 2
    return math.sqrt(min(1.0, max(0.0, divergence)))


def _proportions(counts: np.ndarray) -> np.ndarray:
    total = counts.sum()
    if total <= 0:
        raise ValueError("a histogram needs a positive total")
    proportions: np.ndarray = counts / total
    return proportions


def _kl(p: np.ndarray, m: np.ndarray) -> float:
    mask = p > 0  # 0 · log 0 = 0; m > 0 wherever p > 0
    return float(np.sum(p[mask] * np.log2(p[mask] / m[mask])))


def _numeric_bins(entry: Mapping[str, Any], label: str) -> tuple[np.ndarray, np.ndarray]:
    edges, hist = entry.get("bin_edges"), entry.get("histogram")
    where = f"reference_profile.features[{label!r}]"
    if not isinstance(edges, list) or not isinstance(hist, list) or not 1 <= len(hist) <= MAX_BINS:
        raise ValueError(f"{where}: bin_edges and histogram must be lists (at most {MAX_BINS})")
    if not all(isinstance(e, (int, float)) and not isinstance(e, bool) for e in edges):
        raise ValueError(f"{where}.bin_edges: expected numbers")
    if not all(isinstance(c, int) and not isinstance(c, bool) and c >= 0 for c in hist):
        raise ValueError(f"{where}.histogram: expected counts")
    bounds = np.asarray(edges, dtype=np.float64)
    if not np.all(np.isfinite(bounds)) or np.any(np.diff(bounds) <= 0):
        raise ValueError(f"{where}.bin_edges: expected finite, strictly increasing numbers")
    one_value = bounds.size == 1 and len(hist) == 1  # a constant feature: one bin
    if bounds.size != len(hist) + 1 and not one_value:
        raise ValueError(f"{where}: {len(hist)} histogram bins need {len(hist) + 1} edges")
    counts = np.asarray(hist, dtype=np.float64)
    if counts.sum() <= 0:
        raise ValueError(f"{where}.histogram: empty")
    return bounds, counts


def baselines(
    profile: Mapping[str, Any], inputs: Sequence[TensorSpec]
) -> tuple[FeatureBaseline, ...]:
    """The drift baselines of a manifest's ``reference_profile`` for a model with ``inputs``.

    Features without reference data (or, when the profile is malformed, all of them) get no
    baseline: they are skipped with a log line, never an error, since a model without a usable
    profile still serves and still reports everything but drift.
    """
    try:
        features = reference_features(profile, inputs)
    except EdgeshipError as e:
        log.warning("no drift scores: the reference profile is unusable: %s", e)
        return ()
    raw = profile.get("features", {})
    found = []
    for feature in features:
        try:
            if feature.kind == "numeric":
                bounds, counts = _numeric_bins(raw[feature.label], feature.label)
                found.append(
                    FeatureBaseline(
                        feature.label,
                        feature.input,
                        feature.index,
                        "numeric",
                        counts,
                        bounds=bounds,
                    )
                )
            elif feature.kind == "categorical":
                if len(feature.frequencies) > MAX_BINS:
                    raise ValueError(f"more than {MAX_BINS} levels")
                levels = np.asarray(feature.levels, dtype=np.float64)
                counts = np.asarray([c for _, c in feature.frequencies] + [0], dtype=np.float64)
                if counts.sum() <= 0:
                    raise ValueError("all level counts are 0")
                found.append(
                    FeatureBaseline(
                        feature.label,
                        feature.input,
                        feature.index,
                        "categorical",
                        counts,
                        levels=levels,
                    )
                )
        except ValueError as e:
            log.warning("no drift score for feature %s: %s", feature.label, e)
    return tuple(found)


def drift_scores(
    found: Sequence[FeatureBaseline], tables: Mapping[str, np.ndarray]
) -> dict[str, DriftScore]:
    """Score every feature whose input is in ``tables`` (input name → float64 rows by columns)."""
    scores = {}
    for baseline in found:
        table = tables.get(baseline.input)
        if table is None or table.ndim != 2 or baseline.index >= table.shape[1]:
            continue
        score = baseline.score(table[:, baseline.index])
        if score is not None:
            scores[baseline.label] = score
    return scores
