"""The inference service's memory of recent predictions, which feedback is checked against."""

from __future__ import annotations

import numpy as np
import pytest

import runtime.service as service_module
from runtime.errors import InputError
from runtime.install import install_bundle
from runtime.registry import ModelRegistry
from runtime.service import InferenceService, _Remembered
from runtime.store import Store
from tests.conftest import BuildBundle

MEMORY = 20


@pytest.fixture
def service(
    device: Store, build_bundle: BuildBundle, monkeypatch: pytest.MonkeyPatch
) -> InferenceService:
    monkeypatch.setattr(service_module, "FEEDBACK_MEMORY", MEMORY)
    install_bundle(device, build_bundle("1.0.0", 10))
    return InferenceService(ModelRegistry(device))


def _feeds(service: InferenceService) -> dict[str, np.ndarray]:
    name = service.model("iris").manifest.model.inputs[0].name
    return {name: np.array([[5.1, 3.5, 1.4, 0.2], [6.7, 3.0, 5.2, 2.3]], np.float32)}


def test_feedback_is_accepted_for_the_last_predictions_only(service: InferenceService) -> None:
    feeds = _feeds(service)
    served = [service.predict("iris", feeds) for _ in range(MEMORY + 5)]
    label_output = service.model("iris").manifest.model.label_output
    assert label_output is not None
    for old in served[:5]:
        with pytest.raises(InputError, match="unknown prediction id"):
            service.feedback("iris", old.id, [0, 2])
    for recent in served[5:]:
        record = service.feedback("iris", recent.id, [0, 2])
        expected = np.asarray(recent.prediction.outputs[label_output]).reshape(-1)
        assert record.predicted.dtype == expected.dtype
        assert record.predicted.tolist() == expected.tolist()
    assert service.counters("iris").feedback == MEMORY


@pytest.mark.parametrize(
    "suffix",
    ["", "-", "x", "+1", " 1", "1 ", "\u0663", "1.0", "9" * 5000, "-1"],
)
def test_ids_that_were_never_served_are_refused(service: InferenceService, suffix: str) -> None:
    served = service.predict("iris", _feeds(service))
    prefix = served.id.rpartition("-")[0]
    for ident in (f"{prefix}-{suffix}", f"other-{suffix}", suffix):
        with pytest.raises(InputError, match="unknown prediction id"):
            service.feedback("iris", ident, [0, 2])
    with pytest.raises(InputError, match="unknown prediction id"):
        service.feedback("echo", served.id, [0, 2])  # the id of another model's prediction


@pytest.mark.parametrize(
    "values",
    [
        np.array([0, 2, 1], np.int64),
        np.array([0.5, -1.25], np.float32),
        np.array([True, False]),
        np.array(["setosa", "virginica"]),
        np.array(["a", "bb"], dtype=object),
        np.array([[1, 2], [3, 4]])[:, 0],  # not contiguous
    ],
)
def test_remembered_values_come_back_as_they_were(values: np.ndarray) -> None:
    back = _Remembered.of("p-1", "m", "1.0.0", "classification", values).predicted()
    assert back.dtype == values.dtype
    assert back.tolist() == values.tolist()
