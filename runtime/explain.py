"""Per-prediction explanations for tabular models: occlusion against the reference profile.

For a row ``x`` and a scalar model output ``f``, the attribution of feature ``j`` is
``f(x) - f(x with feature j set to its baseline)``. The baseline of a feature is its typical value
in the bundle's reference profile: the mean of a numeric feature, the most frequent level of a
categorical one (``ReferenceFeature.baseline``). ``f`` is the probability of the predicted class
for a classifier (the class with the highest probability for that row), the single output value
for a regressor. Every row, each of its occluded copies and the baseline row go through the
backend together: one call, or as few as the backend's batch limit allows.

The method and its limits are documented in docs/explain.md. A model that is not tabular (one 2-D
floating-point input ``[N, F]`` with a baseline for every column, and one scalar output to
explain) gets a :class:`ModelError` that says so.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Mapping, Optional

import numpy as np

from runtime.backends.base import numpy_dtype
from runtime.errors import InputError, ModelError
from runtime.manifest import TensorSpec
from runtime.model import LoadedModel
from runtime.ranges import IN_RANGE, RangeReport

METHOD = "occlusion"


@dataclass(frozen=True)
class ExplainLimits:
    """Limits on one explanation request; each row costs ``features + 1`` model evaluations."""

    max_rows: int = 10_000
    """Most rows explained in one request."""
    max_evaluations: int = 1_000_000
    """Most rows the model is run on for one request: ``rows * (features + 1) + 1``."""


DEFAULT_EXPLAIN_LIMITS = ExplainLimits()


@dataclass(frozen=True)
class RowExplanation:
    """One row: the explained value, its value on the baseline row, and each feature's share.

    ``class_index`` and ``label`` are set for classifiers: the class whose probability is
    explained.
    """

    value: float
    base_value: float
    attributions: dict[str, float]
    class_index: Optional[int] = None
    label: Optional[Any] = None

    def top(self, count: int) -> list[tuple[str, float]]:
        """The ``count`` features with the largest attributions by magnitude, largest first."""
        ranked = sorted(self.attributions.items(), key=lambda kv: (-abs(kv[1]), kv[0]))
        return ranked[:count]

    def to_dict(self) -> dict[str, Any]:
        doc: dict[str, Any] = {}
        if self.class_index is not None:
            doc.update({"class": self.label, "class_index": self.class_index})
        doc.update(
            {"value": self.value, "base_value": self.base_value, "attributions": self.attributions}
        )
        return doc


@dataclass(frozen=True)
class Explanation:
    """Attributions for every row of a request (docs/explain.md, "Output")."""

    output: str
    """The model output explained: a classifier's probabilities, a regressor's value."""
    kind: str
    """``probability`` (of each row's predicted class) or ``value``."""
    baseline: dict[str, float]
    """The baseline value of each feature, as the model saw it (in the input's type)."""
    rows: tuple[RowExplanation, ...]
    ranges: RangeReport = field(default=IN_RANGE)
    """The request's values outside the reference ranges (attributions there extrapolate)."""

    @property
    def features(self) -> tuple[str, ...]:
        return tuple(self.baseline)

    def to_dict(self) -> dict[str, Any]:
        doc: dict[str, Any] = {
            "method": METHOD,
            "output": self.output,
            "explained": self.kind,
            "features": list(self.baseline),
            "baseline": self.baseline,
            "rows": [r.to_dict() for r in self.rows],
        }
        if self.ranges:
            doc["out_of_range"] = self.ranges.counts
        return doc


@dataclass(frozen=True)
class _Plan:
    """What explaining this model needs, worked out from its manifest."""

    input: TensorSpec
    labels: tuple[str, ...]
    baseline: np.ndarray
    output: str
    classifier: bool


NOT_TABULAR = (
    "explanations need a tabular model with a reference profile: one 2-D floating-point input "
    "[N, F] whose every column has a baseline in the bundle's reference profile"
)


def _plan(model: LoadedModel) -> _Plan:
    info = model.manifest.model
    if len(info.inputs) != 1:
        raise ModelError(f"{NOT_TABULAR}; {model.manifest.name} has {len(info.inputs)} inputs")
    spec = info.inputs[0]
    if len(spec.shape) != 2 or numpy_dtype(spec.dtype).kind != "f":
        raise ModelError(
            f"{NOT_TABULAR}; input {spec.name!r} is {spec.dtype} with {len(spec.shape)} dimensions"
        )
    by_column = {f.index: f for f in model.ranges.features if f.input == spec.name}
    width = spec.shape[1] if spec.shape[1] is not None else len(by_column)
    labels, values = [], []
    for j in range(width):
        feature = by_column.get(j)
        base = feature.baseline if feature is not None else None
        if feature is None or base is None:
            raise ModelError(f"{NOT_TABULAR}; column {j} of {spec.name!r} has no baseline")
        labels.append(feature.label)
        values.append(base)
    baseline = np.array(values, dtype=np.float64).astype(numpy_dtype(spec.dtype))
    output, classifier = _output(model)
    return _Plan(spec, tuple(labels), baseline, output, classifier)


def _output(model: LoadedModel) -> tuple[str, bool]:
    """The output to explain and whether it holds class probabilities."""
    info = model.manifest.model
    floats = [o for o in info.outputs if numpy_dtype(o.dtype).kind == "f"]
    if info.task == "classification" or info.labels is not None:
        classes = len(info.labels) if info.labels is not None else None
        matrices = [
            o
            for o in floats
            if o.name != info.label_output
            and len(o.shape) == 2
            and (classes is None or o.shape[1] in (None, classes))
        ]
        if not matrices:
            raise ModelError(
                "explanations of a classifier need its probability output (a float [N, classes] "
                f"output); {model.manifest.name} has none"
            )
        return matrices[0].name, True
    scalars = [o for o in floats if o.shape[1:] in ((), (1,), (None,))]
    if len(scalars) != 1:
        raise ModelError(
            "explanations of a regressor need exactly one floating-point output with one value "
            f"per row; {model.manifest.name} has {len(scalars)}"
        )
    return scalars[0].name, False


def _expanded(x: np.ndarray, baseline: np.ndarray, start: int, stop: int) -> np.ndarray:
    """Rows ``start:stop`` of the evaluation table: for each row ``i`` of ``x``, the row itself
    then one copy per feature ``j`` with ``j`` set to its baseline; the baseline row last."""
    width = x.shape[1]
    block = width + 1
    body = x.shape[0] * block
    index = np.arange(start, min(stop, body))
    rows: np.ndarray = x[index // block]
    feature = index % block - 1
    occluded = np.flatnonzero(feature >= 0)
    rows[occluded, feature[occluded]] = baseline[feature[occluded]]
    if stop > body:
        rows = np.concatenate([rows, baseline[np.newaxis, :]])
    return rows


def _evaluate(model: LoadedModel, plan: _Plan, x: np.ndarray) -> np.ndarray:
    """The explained output for every row of the evaluation table, in as few backend calls as
    the batch limit allows (one for any request within it)."""
    total = x.shape[0] * (x.shape[1] + 1) + 1
    chunk = max(1, model.checker.limits.max_rows)
    parts = []
    for start in range(0, total, chunk):
        rows = _expanded(x, plan.baseline, start, min(total, start + chunk))
        result = model.backend.run({plan.input.name: rows})[plan.output]
        parts.append(np.asarray(result, dtype=np.float64).reshape(rows.shape[0], -1))
    values = np.concatenate(parts)
    if not plan.classifier and values.shape[1] != 1:
        raise ModelError(f"output {plan.output!r} has {values.shape[1]} values per row, not one")
    return values


def explain(
    model: LoadedModel,
    feeds: Mapping[str, Any],
    limits: ExplainLimits = DEFAULT_EXPLAIN_LIMITS,
) -> Explanation:
    """Explain every row of ``feeds`` (a request, as for ``LoadedModel.predict``).

    Raises ModelError when the model is not tabular or has no output to explain, InputError when
    the request does not fit the model, exceeds ``limits``, or holds out-of-range values the
    bundle rejects.
    """
    plan = _plan(model)
    checked = model.checker.check(feeds)
    report = model.ranges.check(checked)
    x = checked[plan.input.name]
    rows, width = x.shape
    if width != len(plan.labels):
        raise InputError(f"{plan.input.name}: expected {len(plan.labels)} columns, got {width}")
    if rows > limits.max_rows:
        raise InputError(f"explaining {rows} rows; the limit is {limits.max_rows} per request")
    evaluations = rows * (width + 1) + 1
    if evaluations > limits.max_evaluations:
        raise InputError(
            f"explaining {rows} rows of {width} features runs the model on {evaluations} rows; "
            f"the limit is {limits.max_evaluations}"
        )
    values = _evaluate(model, plan, x)
    table, base = values[:-1].reshape(rows, width + 1, values.shape[1]), values[-1]
    picked = np.argmax(table[:, 0, :], axis=1) if plan.classifier else np.zeros(rows, np.intp)
    own = np.take_along_axis(table, picked[:, np.newaxis, np.newaxis], axis=2)[:, :, 0]
    attributions = own[:, :1] - own[:, 1:]
    labels = model.manifest.model.labels
    explained = []
    for i in range(rows):
        c = int(picked[i])
        explained.append(
            RowExplanation(
                value=float(own[i, 0]),
                base_value=float(base[c]),
                attributions={k: float(a) for k, a in zip(plan.labels, attributions[i])},
                class_index=c if plan.classifier else None,
                label=(labels[c] if labels is not None and c < len(labels) else c)
                if plan.classifier
                else None,
            )
        )
    return Explanation(
        output=plan.output,
        kind="probability" if plan.classifier else "value",
        baseline={k: float(b) for k, b in zip(plan.labels, plan.baseline)},
        rows=tuple(explained),
        ranges=report,
    )
