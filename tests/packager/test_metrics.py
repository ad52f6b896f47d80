"""packager/metrics.py: numbers from arrays, with and without labels."""

from __future__ import annotations

import numpy as np
import pytest

from packager import metrics
from runtime.errors import UsageError


def test_classifier_metrics_and_binary_auc():
    labels = np.array([0, 1, 1, 0, 1])
    out = {"label": np.array([0, 1, 0, 0, 1]), "probabilities": np.eye(2)[[0, 1, 0, 0, 1]] * 0.8}
    how = metrics.reading("classification", "label", out, labels)
    found = metrics.labelled(out, labels.astype(float), how)  # CSV labels come as floats
    assert found["accuracy"] == pytest.approx(0.8)
    assert set(found) == {"accuracy", "precision_macro", "recall_macro", "f1_macro", "roc_auc"}


def test_other_task_reads_as_classifier_or_regressor():
    logits = {"y": np.array([[0.1, 0.9, 0.0], [0.8, 0.1, 0.1]], dtype=np.float32)}
    how = metrics.reading("other", None, logits, np.array([1, 0]))
    assert how.kind == "classification" and how.argmax
    assert metrics.labelled(logits, np.array([1, 2]), how)["accuracy"] == 0.5
    values = {"y": np.array([[1.0], [2.0]], dtype=np.float32)}
    how = metrics.reading("other", None, values, np.array([1.0, 2.5]))
    assert metrics.labelled(values, np.array([1.0, 2.5]), how)["mae"] == pytest.approx(0.25)
    with pytest.raises(UsageError, match="cannot score"):
        metrics.reading("other", None, logits, np.array([0.5, 1.5]))
