"""scikit-learn estimator families through ``edgeship build``: real skl2onnx conversions, parity
with the original on the sample, then the bundle installed on a device store and run with
onnxruntime on rows the sample never held, against the original estimator's own answers."""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any, Callable

import joblib
import numpy as np
import pytest
from sklearn.compose import ColumnTransformer
from sklearn.datasets import load_diabetes, load_iris
from sklearn.ensemble import (
    GradientBoostingClassifier,
    GradientBoostingRegressor,
    HistGradientBoostingClassifier,
    HistGradientBoostingRegressor,
    RandomForestClassifier,
    RandomForestRegressor,
)
from sklearn.gaussian_process import GaussianProcessClassifier
from sklearn.impute import SimpleImputer
from sklearn.kernel_ridge import KernelRidge
from sklearn.linear_model import LogisticRegression
from sklearn.neighbors import KNeighborsClassifier, KNeighborsRegressor
from sklearn.neural_network import MLPClassifier, MLPRegressor
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import OneHotEncoder, StandardScaler
from sklearn.svm import SVC, SVR, LinearSVC, LinearSVR

from packager.build import BuildOptions, build
from packager.evaluate import LatencySettings
from runtime.errors import ConversionError, ParityError
from runtime.install import install_bundle
from runtime.model import LoadedModel
from runtime.store import Store

pytestmark = pytest.mark.filterwarnings("ignore:Attribute `prob:FutureWarning")
FAST = LatencySettings(seconds=0.05, max_rounds=5, min_rounds=2, warmup=1)
Make = Callable[[], Any]


def _scaled(estimator: Any) -> Any:
    return make_pipeline(StandardScaler(), estimator)


CLASSIFIERS: dict[str, Make] = {
    "svc-probability": lambda: _scaled(SVC(probability=True, random_state=0)),
    "svc-scores": lambda: _scaled(SVC()),
    "linear-svc": lambda: _scaled(LinearSVC(random_state=0)),
    "knn": lambda: _scaled(KNeighborsClassifier(n_neighbors=5)),
    "random-forest": lambda: RandomForestClassifier(n_estimators=10, random_state=0),
    "gradient-boosting": lambda: GradientBoostingClassifier(n_estimators=10, random_state=0),
    "hist-gradient-boosting": lambda: HistGradientBoostingClassifier(max_iter=10, random_state=0),
    "mlp": lambda: _scaled(MLPClassifier(hidden_layer_sizes=(16,), max_iter=300, random_state=0)),
}
REGRESSORS: dict[str, Make] = {
    "svr": lambda: _scaled(SVR(C=50.0)),
    "linear-svr": lambda: _scaled(LinearSVR(random_state=0, max_iter=5000)),
    "knn": lambda: _scaled(KNeighborsRegressor(n_neighbors=5)),
    "random-forest": lambda: RandomForestRegressor(n_estimators=10, random_state=0),
    "gradient-boosting": lambda: GradientBoostingRegressor(n_estimators=10, random_state=0),
    "hist-gradient-boosting": lambda: HistGradientBoostingRegressor(max_iter=10, random_state=0),
    "mlp": lambda: _scaled(MLPRegressor(hidden_layer_sizes=(16,), max_iter=300, random_state=0)),
}


def _fit(model: Any, x: np.ndarray, y: np.ndarray) -> Any:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # few iterations on purpose: convergence is not tested
        return model.fit(x, y)


def _build_and_install(
    keys: Any, device: Store, tmp_path: Path, model: Any, sample: np.ndarray, **extra: Any
) -> tuple[Any, LoadedModel]:
    joblib.dump(model, tmp_path / "model.joblib")
    np.save(tmp_path / "sample.npy", sample)
    [result] = build(
        BuildOptions(
            model=tmp_path / "model.joblib",
            targets=("x86_64-generic",),
            keys=(keys.key("release"),),
            name="family",
            version="1.0.0",
            sample=tmp_path / "sample.npy",
            out=tmp_path / "dist",
            quantize="none",
            latency=FAST,
            **extra,
        )
    )
    install_bundle(device, result.path)
    return result, LoadedModel.open(device.active_dir("family"))


def _split(x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, ...]:
    """Every other row trains; a third of the rest is the sample, the others are held out."""
    rest = np.arange(1, len(x), 2)
    return x[::2], y[::2], x[rest[::3]], x[np.setdiff1d(rest, rest[::3])]


@pytest.mark.parametrize("family", list(CLASSIFIERS))
def test_classifier_family_builds_installs_and_predicts_like_the_original(
    family: str, keys: Any, device: Store, tmp_path: Path
) -> None:
    x, y = load_iris(return_X_y=True)
    names = np.array(["setosa", "versicolor", "virginica"])
    x_train, y_train, sample, held_out = _split(x, names[y])
    model = _fit(CLASSIFIERS[family](), x_train, y_train)
    result, loaded = _build_and_install(keys, device, tmp_path, model, sample)

    parity = result.parity
    assert parity.passed and parity.label_agreement == 1.0, parity.describe()
    assert parity.max_abs_diff <= 1e-3
    info = result.manifest.model
    assert info.task == "classification"
    assert list(info.labels or []) == list(names)
    scores_name = "probabilities" if hasattr(model, "predict_proba") else "scores"
    assert [o.name for o in info.outputs] == ["label", scores_name]

    rows = held_out.astype(np.float32)
    prediction = loaded.predict({"input": rows})
    np.testing.assert_array_equal(prediction.outputs["label"], model.predict(rows))
    scores = prediction.outputs[scores_name]
    want = model.predict_proba(rows) if scores_name == "probabilities" else None
    if want is None:
        want = model.decision_function(rows)
    np.testing.assert_allclose(scores, want, atol=1e-4)


@pytest.mark.parametrize("family", list(REGRESSORS))
def test_regressor_family_builds_installs_and_predicts_like_the_original(
    family: str, keys: Any, device: Store, tmp_path: Path
) -> None:
    x, y = load_diabetes(return_X_y=True)
    x_train, y_train, sample, held_out = _split(x, y)
    model = _fit(REGRESSORS[family](), x_train, y_train)
    # Targets run from 25 to 346: float32's resolution there is ~3e-5 per operation.
    result, loaded = _build_and_install(keys, device, tmp_path, model, sample, tolerance=1e-2)

    assert result.parity.passed, result.parity.describe()
    assert result.manifest.model.task == "regression"
    rows = held_out.astype(np.float32)
    got = loaded.predict({"input": rows}).outputs["variable"].ravel()
    np.testing.assert_allclose(got, model.predict(rows), rtol=1e-4, atol=1e-2)


@pytest.mark.parametrize("family", ["svc-scores", "linear-svc"])
def test_binary_decision_scores_match_decision_function(
    family: str, keys: Any, device: Store, tmp_path: Path
) -> None:
    x, y = load_iris(return_X_y=True)
    x_train, y_train, sample, held_out = _split(x, (y == 1).astype(np.int64))
    model = _fit(CLASSIFIERS[family](), x_train, y_train)
    result, loaded = _build_and_install(keys, device, tmp_path, model, sample)
    assert result.parity.passed, result.parity.describe()

    rows = held_out.astype(np.float32)
    prediction = loaded.predict({"input": rows})
    decision = model.decision_function(rows)
    scores = prediction.outputs["scores"]
    # SVC: a column per class, (-d, d), as argmax and ROC-AUC read them; LinearSVC: one column
    expected = (
        decision[:, None] if family == "linear-svc" else np.column_stack([-decision, decision])
    )
    np.testing.assert_allclose(scores, expected, atol=1e-4)
    np.testing.assert_array_equal(prediction.outputs["label"], model.predict(rows))


def _mixed_table(rows: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Three numeric columns and two numeric-coded categorical ones (codes 0-3 and 10/20/30),
    about 8% of all values missing; the label depends on both kinds."""
    rng = np.random.default_rng(seed)
    numeric = rng.normal(size=(rows, 3)) * [1.0, 10.0, 0.1] + [0.0, 50.0, 1.0]
    colour = rng.integers(0, 4, size=rows).astype(np.float64)
    size = rng.choice([10.0, 20.0, 30.0], size=rows)
    x = np.column_stack([numeric, colour, size])
    y = ((numeric[:, 0] + (colour == 2) - (size == 30.0)) > 0).astype(np.int64)
    x[rng.random(x.shape) < 0.08] = np.nan
    return x, y


def test_pipeline_with_column_transformer_one_hot_and_imputers(
    keys: Any, device: Store, tmp_path: Path
) -> None:
    x, y = _mixed_table(300, seed=1)
    prepare = ColumnTransformer(
        [
            ("numeric", make_pipeline(SimpleImputer(), StandardScaler()), [0, 1, 2]),
            (
                "categories",
                make_pipeline(
                    SimpleImputer(strategy="most_frequent"),
                    OneHotEncoder(handle_unknown="ignore"),
                ),
                [3, 4],
            ),
        ]
    )
    model = make_pipeline(prepare, LogisticRegression(max_iter=500)).fit(x[:200], y[:200])
    sample = x[200:260]
    assert np.isnan(sample[:32]).any(), "the sample (and its first 32 rows) must hold NaN"
    warned: list[str] = []
    joblib.dump(model, tmp_path / "model.joblib")
    np.save(tmp_path / "sample.npy", sample)
    [result] = build(
        BuildOptions(
            model=tmp_path / "model.joblib",
            targets=("x86_64-generic",),
            keys=(keys.key("release"),),
            name="family",
            version="1.0.0",
            sample=tmp_path / "sample.npy",
            out=tmp_path / "dist",
            quantize="none",
            latency=FAST,
        ),
        warn=warned.append,
    )
    assert result.parity.passed and result.parity.label_agreement == 1.0
    assert result.parity.max_abs_diff <= 1e-5, result.parity.describe()
    assert any("missing (NaN)" in w for w in warned)
    install_bundle(device, result.path)  # the self-test runs on complete rows only
    loaded = LoadedModel.open(device.active_dir("family"))

    held_out, _ = _mixed_table(40, seed=2)
    complete = held_out[~np.isnan(held_out).any(axis=1)].astype(np.float32)
    complete[0, 3] = 7.0  # a colour code never seen in training: encoded as all zeros
    prediction = loaded.predict({"input": complete})
    np.testing.assert_array_equal(prediction.outputs["label"], model.predict(complete))
    np.testing.assert_allclose(
        prediction.outputs["probabilities"], model.predict_proba(complete), atol=1e-5
    )


def test_estimator_without_a_converter_is_named_with_what_to_do(
    keys: Any, device: Store, tmp_path: Path
) -> None:
    x, y = load_diabetes(return_X_y=True)
    model = _scaled(KernelRidge(alpha=1.0)).fit(x, y)
    out = tmp_path / "dist"
    with pytest.raises(ConversionError) as info:
        _build_and_install(keys, device, tmp_path, model, x[:20])
    message = str(info.value)
    assert "no converter for KernelRidge (step 'kernelridge')" in message
    assert "update_registered_converter" in message
    assert "export the model to ONNX yourself" in message
    assert not out.exists()


def test_estimator_converted_into_ops_onnxruntime_lacks_is_refused(
    keys: Any, device: Store, tmp_path: Path
) -> None:
    x, y = load_iris(return_X_y=True)
    model = GaussianProcessClassifier(random_state=0).fit(x[::5], (y[::5] == 1).astype(int))
    with pytest.raises(ConversionError, match="GaussianProcessClassifier, but onnxruntime cannot"):
        _build_and_install(keys, device, tmp_path, model, x[:10])
    assert not (tmp_path / "dist").exists()


def test_forest_trained_on_missing_values_is_caught_by_the_parity_gate(
    keys: Any, device: Store, tmp_path: Path
) -> None:
    # skl2onnx 1.20 drops the NaN routing trees learn (missing_go_to_left): every NaN takes the
    # false branch in onnxruntime. The build must refuse, not ship a model that answers otherwise.
    rng = np.random.default_rng(0)
    x = rng.normal(size=(400, 6))
    y = (x[:, 0] + 0.5 * x[:, 1] > 0).astype(np.int64)
    x[rng.random(x.shape) < 0.15] = np.nan
    model = RandomForestClassifier(n_estimators=20, max_depth=5, random_state=0).fit(x, y)
    with pytest.raises(ParityError, match="label agreement"):
        _build_and_install(keys, device, tmp_path, model, x[:100])
    assert not (tmp_path / "dist").exists()
