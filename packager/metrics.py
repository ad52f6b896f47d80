"""Numbers that say how good a model's outputs are: pure functions of arrays, no models run here.

With labels: accuracy, macro precision/recall/F1 and (binary) ROC-AUC for classifiers; MAE, RMSE
and R² for regressors. Without labels: agreement with the original model's outputs. ``loss`` turns
a candidate's numbers and the original's into the one figure the validation gate compares with
``--max-accuracy-drop``.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import Any, Optional

import numpy as np

from packager.convert import Arrays
from runtime.errors import UsageError

Metrics = dict[str, Optional[float]]
CLASSIFICATION, REGRESSION = "classification", "regression"


@dataclass(frozen=True)
class Reading:
    """How to read a model's outputs: which output holds predicted labels or values, which holds
    class scores, and whether class indices come from an argmax (models of task ``other``)."""

    kind: str
    prediction: str
    scores: Optional[str] = None
    argmax: bool = False


def reading(
    task: str, label_output: Optional[str], outputs: Arrays, labels: Optional[np.ndarray]
) -> Reading:
    """How to score ``outputs`` against ``labels``; raises UsageError when they cannot be matched.

    Classifiers and regressors say what they are. A model of task ``other`` is read as a
    classifier when its first float output has one column per class and the labels are whole
    numbers (class indices, by argmax), and as a regressor when it has one value per row.
    """
    if task == CLASSIFICATION and label_output is not None:
        others = [k for k, v in outputs.items() if k != label_output and v.dtype.kind == "f"]
        return Reading(CLASSIFICATION, label_output, others[0] if others else None)
    floats = [k for k, v in outputs.items() if v.dtype.kind == "f"]
    if not floats:
        raise UsageError("the model has no numeric output to score against --labels")
    first = outputs[floats[0]]
    rows = int(first.shape[0]) if first.ndim else 1
    if task == REGRESSION or first.size == rows:
        return Reading(REGRESSION, floats[0])
    whole = labels is not None and labels.dtype.kind in "iuf" and bool(np.all(labels % 1 == 0))
    if first.ndim == 2 and first.shape[1] > 1 and whole:
        return Reading(CLASSIFICATION, floats[0], floats[0], argmax=True)
    raise UsageError(
        f"cannot score output {floats[0]!r} of shape {first.shape} against the labels: give "
        "class indices for a score per class, or one value per row"
    )


def labelled(outputs: Arrays, labels: np.ndarray, how: Reading) -> Metrics:
    """Metrics of ``outputs`` against the true ``labels`` (one per row)."""
    from sklearn import metrics as skm

    raw = outputs[how.prediction]
    if how.kind == REGRESSION:
        predicted = np.asarray(raw, dtype=np.float64).ravel()
        truth = np.asarray(labels, dtype=np.float64).ravel()
        _same_rows(predicted, truth)
        error = predicted - truth
        return {
            "mae": float(np.mean(np.abs(error))),
            "rmse": float(np.sqrt(np.mean(error**2))),
            "r2": float(skm.r2_score(truth, predicted)),
        }
    predicted = np.argmax(raw, axis=1) if how.argmax else np.asarray(raw).ravel()
    truth = _like(np.asarray(labels).ravel(), predicted)
    _same_rows(predicted, truth)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # undefined precision for absent classes counts as 0
        result: Metrics = {
            "accuracy": float(skm.accuracy_score(truth, predicted)),
            "precision_macro": float(
                skm.precision_score(truth, predicted, average="macro", zero_division=0)
            ),
            "recall_macro": float(
                skm.recall_score(truth, predicted, average="macro", zero_division=0)
            ),
            "f1_macro": float(skm.f1_score(truth, predicted, average="macro", zero_division=0)),
        }
    scores = outputs.get(how.scores) if how.scores else None
    if scores is not None and scores.ndim == 2 and scores.shape[1] == 2:
        result["roc_auc"] = _auc(truth, scores)
    return result


def agreement(outputs: Arrays, reference: Arrays, label_output: Optional[str]) -> Metrics:
    """How closely ``outputs`` follow the original model's ``reference`` outputs: share of equal
    labels (classifiers), largest and mean absolute difference, and R² of the numeric outputs
    taken as predictions of the original's (``output_r2``)."""
    from sklearn.metrics import r2_score

    result: Metrics = {"label_agreement": None}
    got_all, want_all = [], []
    for name, want in reference.items():
        got = outputs.get(name)
        if got is None:
            raise UsageError(f"the candidate has no output {name!r}")
        if name == label_output or want.dtype.kind not in "fiub":
            result["label_agreement"] = float(np.mean(_like(want.ravel(), got) == got.ravel()))
            continue
        got_all.append(np.asarray(got, dtype=np.float64).ravel())
        want_all.append(np.asarray(want, dtype=np.float64).ravel())
    if got_all:
        got_v, want_v = np.concatenate(got_all), np.concatenate(want_all)
        diff = np.abs(got_v - want_v)
        result["max_abs_diff"] = float(diff.max()) if diff.size else 0.0
        result["mean_abs_diff"] = float(diff.mean()) if diff.size else 0.0
        result["output_r2"] = float(r2_score(want_v, got_v)) if diff.size > 1 else None
    return result


def loss(candidate: Metrics, original: Metrics, how: Optional[Reading]) -> tuple[str, float]:
    """The figure the gate compares with ``--max-accuracy-drop``, and its name.

    With labels (``how`` given): the drop in accuracy (classifiers) or in R² (regressors) from
    the original model. Without: the share of rows whose label differs from the original's, or,
    for models without a label output, 1 - R² of the outputs against the original's.
    """
    if how is not None:
        key = "accuracy" if how.kind == CLASSIFICATION else "r2"
        name = "accuracy drop" if how.kind == CLASSIFICATION else "R² drop"
        return name, max(0.0, _num(original.get(key)) - _num(candidate.get(key)))
    if candidate.get("label_agreement") is not None:
        return "label disagreement", 1.0 - _num(candidate["label_agreement"])
    return "1 - output R²", max(0.0, 1.0 - _num(candidate.get("output_r2"), 1.0))


def _num(value: Optional[float], default: float = 0.0) -> float:
    return default if value is None or not np.isfinite(value) else float(value)


def _auc(truth: np.ndarray, scores: np.ndarray) -> Optional[float]:
    from sklearn.metrics import roc_auc_score

    if np.unique(truth).size != 2:
        return None
    try:
        return float(roc_auc_score(truth, np.asarray(scores, dtype=np.float64)[:, 1]))
    except ValueError:
        return None


def _like(labels: np.ndarray, predicted: np.ndarray) -> Any:
    """Whole-number float labels (a CSV file) compared with integer predictions become ints."""
    if labels.dtype.kind == "f" and predicted.dtype.kind in "iu" and np.all(labels % 1 == 0):
        return labels.astype(np.int64)
    return labels


def _same_rows(predicted: np.ndarray, truth: np.ndarray) -> None:
    if predicted.shape[0] != truth.shape[0]:
        raise UsageError(
            f"--labels has {truth.shape[0]} rows but the validation data {predicted.shape[0]}"
        )
