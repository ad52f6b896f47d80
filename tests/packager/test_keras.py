"""packager/convert/from_keras.py: a small Keras MLP trained here, converted with TensorFlow's
TFLiteConverter, validated and timed with LiteRT, installed on a device store and run there."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import tensorflow as tf
from sklearn.datasets import load_iris

from packager.build import BuildOptions, BuildResult, build
from packager.convert import convert
from packager.data import Dataset
from packager.evaluate import LatencySettings
from runtime.backends.litert import interpreter_class
from runtime.errors import ConversionError
from runtime.install import install_bundle
from runtime.model import LoadedModel
from runtime.store import Store

ROOT = Path(__file__).resolve().parents[2]
FAST = LatencySettings(seconds=0.05, max_rounds=5, min_rounds=2, warmup=1)
keras = tf.keras
pytestmark = pytest.mark.filterwarnings(
    "ignore:__array__ implementation doesn't accept a copy keyword:DeprecationWarning"
)


@pytest.fixture(scope="module")
def iris_mlp(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """A 4 → 16 → 3 softmax MLP (normalization inside) fitted on every other iris row, saved as
    .keras and .h5, with its data files: the rest of the rows split into sample and held-out."""
    folder = tmp_path_factory.mktemp("keras")
    x, y = load_iris(return_X_y=True)
    x = x.astype(np.float32)
    keras.utils.set_random_seed(0)
    norm = keras.layers.Normalization()
    norm.adapt(x[::2])
    model = keras.Sequential(
        [
            keras.Input((4,), name="features"),
            norm,
            keras.layers.Dense(16, activation="relu"),
            keras.layers.Dense(3, activation="softmax"),
        ]
    )
    model.compile(optimizer=keras.optimizers.Adam(0.05), loss="sparse_categorical_crossentropy")
    model.fit(x[::2], y[::2], epochs=40, batch_size=16, verbose=0)
    model.save(folder / "mlp.keras")
    model.save(folder / "mlp.h5")
    rest = np.arange(1, len(x), 2)
    np.save(folder / "sample.npy", x[rest[::2]])
    np.save(folder / "validation.npy", x[rest])
    np.save(folder / "labels.npy", y[rest])
    return {"model": model, "folder": folder, "held_out": x[rest[1::2]], "x": x, "y": y}


def _build(keys: Any, data: dict[str, Any], out: Path, **extra: Any) -> tuple[BuildResult, list]:
    folder = data["folder"]
    tables: list[dict[str, Any]] = []
    [result] = build(
        BuildOptions(
            model=extra.pop("model", folder / "mlp.keras"),
            targets=("x86_64-generic",),
            keys=(keys.key("release"),),
            name="keras-mlp",
            version="1.0.0",
            sample=folder / "sample.npy",
            validation=folder / "validation.npy",
            labels=folder / "labels.npy",
            out=out,
            latency=FAST,
            **extra,
        ),
        table=lambda _profile, report: tables.append(report),
    )
    return result, tables


def _tensor_types(model_file: Path) -> set[str]:
    interpreter = interpreter_class()(model_path=str(model_file))
    return {np.dtype(d["dtype"]).name for d in interpreter.get_tensor_details()}


def _install(device: Store, result: BuildResult) -> LoadedModel:
    install_bundle(device, result.path)
    return LoadedModel.open(device.active_dir("keras-mlp"))


def test_float_conversion_has_parity_with_keras(iris_mlp, tmp_path) -> None:
    converted = convert(iris_mlp["folder"] / "mlp.keras", Dataset({None: iris_mlp["x"]}), print)
    assert converted.model_format == "tflite"
    assert converted.source_format == "keras (keras)"
    assert converted.converter["tensorflow"] == tf.__version__
    assert "ai-edge-litert" in converted.converter
    [name] = converted.inputs
    assert "features" in name
    [output] = converted.reference
    want = iris_mlp["model"].predict(iris_mlp["x"], verbose=0)
    np.testing.assert_allclose(converted.reference[output], want, atol=1e-6)
    assert converted.variants is not None


def test_static_ships_full_integer_with_float_io_and_predicts_on_the_device(
    iris_mlp, keys, device, tmp_path
) -> None:
    result, [table] = _build(keys, iris_mlp, tmp_path / "dist", quantize="static")
    manifest = result.manifest
    assert manifest.quantization["mode"] == "static"
    assert manifest.quantization["settings"]["activations"] == "int8"
    assert manifest.quantization["settings"]["inputs_outputs"] == "float32"
    assert [s.dtype for s in manifest.model.inputs] == ["float32"]
    assert [s.dtype for s in manifest.model.outputs] == ["float32"]
    modes = {row["mode"]: row for row in table["candidates"]}
    assert set(modes) == {"none", "static"}
    assert modes["static"]["verdict"] == "chosen"
    metrics = manifest.validation["metrics"]
    assert metrics["original"]["accuracy"] >= 0.9
    assert metrics["gate"]["value"] <= 0.01  # the accuracy drop int8 cost, measured

    loaded = _install(device, result)
    assert "int8" in _tensor_types(loaded.folder / "payload" / "model.tflite")
    rows = iris_mlp["held_out"]
    [output] = loaded.manifest.model.outputs
    got = loaded.predict({loaded.manifest.model.inputs[0].name: rows}).outputs[output.name]
    want = iris_mlp["model"].predict(rows, verbose=0)
    # int8 inside: probabilities in steps of 1/256, and a row near a class border may move more
    assert np.abs(got - want).mean() < 0.02
    assert np.mean(got.argmax(axis=1) == want.argmax(axis=1)) >= 0.95


def test_auto_measures_every_mode_and_says_which_are_not_quantizable(
    iris_mlp, keys, tmp_path
) -> None:
    result, [table] = _build(keys, iris_mlp, tmp_path / "dist")
    rows = {row["mode"]: row for row in table["candidates"]}
    assert set(rows) == {"none", "dynamic", "static", "fp16"}
    # 4x16 and 16x3 weights are under the converter's 1024-value threshold for dynamic range
    assert rows["dynamic"]["verdict"] == "not quantizable"
    assert "1024" in rows["dynamic"]["detail"]
    for mode in ("none", "static", "fp16"):
        assert rows[mode]["metrics"]["accuracy"] is not None
        assert rows[mode]["latency_ms"]["p50"] > 0
    assert rows["fp16"]["metrics"]["max_abs_diff"] < 1e-2
    chosen = [m for m, r in rows.items() if r["verdict"] == "chosen"]
    assert chosen == [result.manifest.quantization["mode"]]


@pytest.mark.parametrize("model_file", ["mlp.keras", "mlp.h5"])
def test_float_bundle_predicts_like_keras(iris_mlp, keys, device, tmp_path, model_file) -> None:
    warnings: list[str] = []
    [result] = build(
        BuildOptions(
            model=iris_mlp["folder"] / model_file,
            targets=("x86_64-generic",),
            keys=(keys.key("release"),),
            name="keras-mlp",
            version="1.0.0",
            sample=iris_mlp["folder"] / "sample.npy",
            out=tmp_path / "dist",
            quantize="none",
            latency=FAST,
        ),
        warn=warnings.append,
    )
    assert result.parity.max_abs_diff < 1e-5
    assert result.manifest.quantization["mode"] == "none"
    assert any("Lambda-layer" in w for w in warnings) == model_file.endswith(".h5")
    loaded = _install(device, result)
    assert _tensor_types(loaded.folder / "payload" / "model.tflite") == {"float32"}
    rows = iris_mlp["held_out"]
    outputs = loaded.predict({loaded.manifest.model.inputs[0].name: rows}).outputs
    np.testing.assert_allclose(
        next(iter(outputs.values())), iris_mlp["model"].predict(rows, verbose=0), atol=1e-5
    )


def test_two_input_model_is_refused_with_what_to_do(tmp_path) -> None:
    a, b = keras.Input((2,), name="a"), keras.Input((3,), name="b")
    model = keras.Model([a, b], keras.layers.Dense(1)(keras.layers.Concatenate()([a, b])))
    model.save(tmp_path / "two.keras")
    with pytest.raises(
        ConversionError, match=r"2 inputs and 1 outputs.*convert others to \.tflite"
    ):
        convert(tmp_path / "two.keras", Dataset({None: np.zeros((2, 5))}), lambda _: None)


def test_a_file_that_is_not_a_keras_model_is_a_conversion_error(tmp_path) -> None:
    path = tmp_path / "model.keras"
    path.write_bytes(b"not a zip archive")
    with pytest.raises(ConversionError, match=r"cannot load model\.keras as a Keras model"):
        convert(path, Dataset({None: np.zeros((2, 4))}), lambda _: None)


BLOCK_TENSORFLOW = """
import importlib.abc, sys
from pathlib import Path
class Block(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in ("tensorflow", "keras"):
            raise ImportError(f"No module named {name!r}")
        return None
sys.meta_path.insert(0, Block())
import numpy as np
from packager.convert import convert
from packager.data import Dataset
from runtime.errors import ConversionError
try:
    convert(Path(sys.argv[1]), Dataset({None: np.zeros((2, 4))}), lambda _: None)
except ConversionError as e:
    print(e)
"""


def test_without_tensorflow_the_error_says_how_to_install_it(iris_mlp) -> None:
    done = subprocess.run(
        [sys.executable, "-c", BLOCK_TENSORFLOW, str(iris_mlp["folder"] / "mlp.keras")],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    assert "pip install 'edgeship[tensorflow]'" in done.stdout
