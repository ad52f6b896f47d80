"""Occlusion explanations (runtime/explain.py) on real bundles run by real onnxruntime."""

from __future__ import annotations

import dataclasses
import json
from typing import Any

import numpy as np
import pytest
import skops.io as sio
from click.testing import CliRunner
from sklearn.datasets import load_iris
from sklearn.linear_model import LinearRegression, LogisticRegression

from runtime.backends.base import Arrays, Backend
from runtime.cli import main
from runtime.errors import InputError, ModelError
from runtime.explain import ExplainLimits, explain
from runtime.install import install_bundle
from runtime.limits import DEFAULT_INPUT_LIMITS, InputLimits
from runtime.manifest import TensorSpec
from runtime.model import LoadedModel
from runtime.store import Store
from runtime.trust import TrustPolicy
from tests.packager.onnx_models import two_input_model

EPS32 = float(np.finfo(np.float32).eps)
COEF = np.array([1.5, -2.0, 0.5, 0.0, 3.0])


class CountingBackend(Backend):
    """The real backend, with a record of the batch size of every call."""

    name = "counting"

    def __init__(self, inner: Backend) -> None:
        self.inner = inner
        self.calls: list[int] = []

    @property
    def inputs(self) -> tuple[TensorSpec, ...]:
        return self.inner.inputs

    @property
    def outputs(self) -> tuple[TensorSpec, ...]:
        return self.inner.outputs

    def _run(self, feeds: Arrays) -> dict[str, np.ndarray]:
        self.calls.append(next(iter(feeds.values())).shape[0])
        return self.inner.run(feeds)


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """A linear regression with known weights, and a logistic regression on iris plus a column
    ``ignored`` whose weights are zero."""
    folder = tmp_path_factory.mktemp("explain")
    rng = np.random.default_rng(3)
    x = (rng.normal(size=(200, 5)) * [1, 2, 3, 1, 0.5] + [0, 1, -2, 5, 0]).astype(np.float32)
    linear = LinearRegression().fit(x, x.astype(np.float64) @ COEF + 4.0)
    sio.dump(linear, folder / "lin.skops")
    np.save(folder / "lin.npy", x)

    iris = load_iris()
    xi = np.column_stack([iris.data, rng.uniform(-1, 1, len(iris.data))]).astype(np.float32)
    yi = iris.target_names[iris.target]
    clf = LogisticRegression(max_iter=1000).fit(xi, yi)
    clf.coef_[:, 4] = 0.0
    sio.dump(clf, folder / "clf.skops")
    header = "sepal_length,sepal_width,petal_length,petal_width,ignored"
    np.savetxt(folder / "clf.csv", xi[::2], delimiter=",", header=header, comments="")
    return {"linear": linear, "x": x, "clf": clf, "xi": xi, "folder": folder}


@pytest.fixture(scope="module")
def store(tmp_path_factory, keys, build_bundle, data) -> Store:
    store = Store(tmp_path_factory.mktemp("device"))
    store.save_policy(TrustPolicy.create([(keys.public("release"), "release")]))
    folder = data["folder"]
    for name, model, sample, options in (
        ("lin", "lin.skops", "lin.npy", {}),
        ("clf", "clf.skops", "clf.csv", {}),
        ("lin-strict", "lin.skops", "lin.npy", {"reject_out_of_range": True}),
    ):
        bundle = build_bundle(
            name=name, model=folder / model, sample=folder / sample, quantize="none", **options
        )
        install_bundle(store, bundle)
    two = two_input_model(folder / "two.onnx")
    np.savez(folder / "two.npz", a=np.ones((3, 4)), b=np.ones((3, 3)), scale=np.array([2]))
    install_bundle(store, build_bundle(name="two", model=two, sample=folder / "two.npz"))
    return store


def _open(store: Store, name: str, limits: InputLimits = DEFAULT_INPUT_LIMITS) -> LoadedModel:
    model = LoadedModel.open(store.active_dir(name), limits)
    model.backend = CountingBackend(model.backend)
    return model


def _matrix(explanation, labels) -> np.ndarray:
    return np.array([[row.attributions[k] for k in labels] for row in explanation.rows])


def test_linear_attributions_are_weight_times_distance_to_the_mean(store, data):
    model = _open(store, "lin")
    x = data["x"][:25]
    explanation = explain(model, {"input": x})
    labels = [f"input[{j}]" for j in range(5)]
    assert explanation.features == tuple(labels)
    features = model.manifest.reference_profile["features"]
    mean = np.array([features[k]["mean"] for k in labels])
    weights = data["linear"].coef_
    got = _matrix(explanation, labels)
    values = np.array([r.value for r in explanation.rows])
    scale = float(np.abs(values).max() + np.abs(weights * mean).sum())
    # exact in real arithmetic; the model computes in float32
    assert np.allclose(got, weights * (x - mean), rtol=0, atol=16 * EPS32 * scale)
    assert np.allclose(got[:, 3], 0, atol=16 * EPS32 * scale)  # weight 0
    baseline = np.array([explanation.baseline[k] for k in labels])
    assert np.allclose(baseline, mean, rtol=EPS32)
    base = explanation.rows[0].base_value
    assert base == pytest.approx(float(data["linear"].predict(baseline[None, :])[0]), rel=1e-5)
    # linear and additive: the attributions add up to the prediction's distance from the base
    assert np.allclose(got.sum(axis=1), values - base, atol=32 * EPS32 * scale)
    predicted = model.predict({"input": x}).outputs["variable"][:, 0]
    assert np.allclose(values, predicted, rtol=1e-6, atol=1e-6)
    assert all(r.class_index is None for r in explanation.rows)
    assert explanation.kind == "value" and explanation.output == "variable"


def test_classifier_explains_the_predicted_class_and_ignores_a_dead_feature(store, data):
    model = _open(store, "clf")
    x = data["xi"][::10]
    explanation = explain(model, {"input": x})
    prediction = model.predict({"input": x})
    probabilities = prediction.outputs["probabilities"]
    classes = list(model.manifest.model.labels or ())
    assert classes == ["setosa", "versicolor", "virginica"]
    assert explanation.features[-1] == "ignored"
    for i, row in enumerate(explanation.rows):
        best = int(np.argmax(probabilities[i]))
        assert row.class_index == best and row.label == classes[best]
        assert row.value == pytest.approx(float(probabilities[i, best]), abs=1e-6)
        assert abs(row.attributions["ignored"]) < 1e-6
        assert max(abs(v) for v in row.attributions.values()) > 1e-3
        assert row.top(1)[0][0] != "ignored"
    doc = explanation.to_dict()
    assert doc["explained"] == "probability" and doc["output"] == "probabilities"
    assert doc["rows"][0]["class"] in classes and set(doc["rows"][0]["attributions"]) == set(
        explanation.features
    )
    json.dumps(doc)  # plain JSON types only


def test_one_backend_call_for_the_whole_request(store, data):
    model = _open(store, "lin")
    explain(model, {"input": data["x"][:40]})
    assert model.backend.calls == [40 * 6 + 1]


def test_chunks_respect_the_batch_limit_and_agree(store, data):
    x = data["x"][:3]
    whole = explain(_open(store, "lin"), {"input": x})
    model = _open(store, "lin", InputLimits(max_rows=7))
    chunked = explain(model, {"input": x})
    assert model.backend.calls == [7, 7, 5]
    labels = whole.features
    assert np.allclose(_matrix(whole, labels), _matrix(chunked, labels), atol=1e-5)
    assert [r.base_value for r in whole.rows] == pytest.approx([r.base_value for r in chunked.rows])


def test_explanation_limits(store, data):
    model = _open(store, "lin")
    with pytest.raises(InputError, match="explaining 3 rows; the limit is 2"):
        explain(model, {"input": data["x"][:3]}, ExplainLimits(max_rows=2))
    with pytest.raises(InputError, match="runs the model on 19 rows; the limit is 18"):
        explain(model, {"input": data["x"][:3]}, ExplainLimits(max_evaluations=18))
    with pytest.raises(InputError, match="dimension 1 must be 5"):
        explain(model, {"input": data["x"][:3, :4]})
    assert model.backend.calls == []
    empty = explain(model, {"input": np.zeros((0, 5), np.float32)})
    assert empty.rows == () and model.backend.calls == [1]  # the baseline row only


def test_out_of_range_values_are_reported_or_rejected(store, data):
    x = data["x"][:4].copy()
    x[1, 2] = 1000.0
    explanation = explain(_open(store, "lin"), {"input": x})
    assert explanation.to_dict()["out_of_range"] == {"input[2]": 1}
    with pytest.raises(InputError, match="rejects out-of-range inputs"):
        explain(_open(store, "lin-strict"), {"input": x})


def _replaced(loaded: LoadedModel, **changes: Any) -> LoadedModel:
    manifest = dataclasses.replace(loaded.manifest, **changes)
    return LoadedModel(manifest, loaded.folder, loaded.backend)


def test_models_that_are_not_tabular_get_a_clear_error(store, data):
    with pytest.raises(ModelError, match="need a tabular model with a reference profile"):
        explain(_open(store, "two"), {"a": np.ones((1, 4)), "b": np.ones((1, 3)), "scale": [2]})
    no_profile = _replaced(_open(store, "lin"), reference_profile={})
    with pytest.raises(ModelError, match="column 0 of 'input' has no baseline"):
        explain(no_profile, {"input": data["x"][:1]})
    clf = _open(store, "clf")
    info = clf.manifest.model
    labels_only = dataclasses.replace(
        info, outputs=tuple(o for o in info.outputs if o.name == "label")
    )
    with pytest.raises(ModelError, match="need its probability output"):
        explain(_replaced(clf, model=labels_only), {"input": data["xi"][:1]})


# --- the CLI ------------------------------------------------------------------------------------


def _predict(store: Store, name: str, path, *args: str):
    return CliRunner().invoke(
        main, ["predict", name, "--input", str(path), "--explain", "--home", str(store.home), *args]
    )


def test_cli_explain_json(store, data, tmp_path):
    path = tmp_path / "rows.json"
    path.write_text(json.dumps(data["x"][:2].tolist()))
    result = _predict(store, "lin", path, "--json")
    assert result.exit_code == 0, result.output
    doc = json.loads(result.stdout)
    assert len(doc["outputs"]["variable"]) == 2
    explanations = doc["explanations"]
    assert explanations["method"] == "occlusion" and len(explanations["rows"]) == 2
    row = explanations["rows"][0]
    assert row["value"] == pytest.approx(doc["outputs"]["variable"][0][0], abs=1e-5)
    assert set(row) == {"value", "base_value", "attributions"}


def test_cli_explain_human_shows_top_features(store, data, tmp_path):
    np.save(tmp_path / "rows.npy", data["xi"][[0, 100]])
    result = _predict(store, "clf", tmp_path / "rows.npy")
    assert result.exit_code == 0, result.output
    lines = [line for line in result.stdout.splitlines() if line.startswith("row ")]
    assert len(lines) == 2
    assert lines[0].startswith("row 0: p(setosa) = ") and "(baseline " in lines[0]
    assert lines[1].startswith("row 1: p(virginica) = ")
    assert "ignored" not in lines[0]


def test_cli_explain_on_a_model_that_is_not_tabular_exits_4(store, tmp_path):
    np.savez(tmp_path / "r.npz", a=np.ones((1, 4)), b=np.ones((1, 3)), scale=np.array([2]))
    result = _predict(store, "two", tmp_path / "r.npz")
    assert result.exit_code == 4
    assert "explanations need a tabular model" in result.stderr
