"""packager/convert/from_tflite.py: real .tflite files, real LiteRT, answers checked with numpy."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from packager.convert import Converted, convert
from packager.convert.from_tflite import convert_tflite, is_tflite
from packager.data import Dataset
from packager.runner import describe, run_packaged
from runtime.errors import ConversionError, UsageError
from runtime.manifest import TensorSpec
from tests.packager import tflite_models as tm
from tests.packager.onnx_models import constant_weight_mlp

ROWS = np.random.default_rng(7).normal(size=(9, 4))


def _ignore(_: str) -> None:
    pass


def _convert(path: Path, sample: Dataset) -> tuple[Converted, list[str]]:
    warnings: list[str] = []
    return convert(path, sample, warnings.append), warnings


@pytest.fixture
def float_model(tmp_path: Path) -> Path:
    return tm.float_mlp(tmp_path / "mlp.tflite")


@pytest.fixture
def int8_model(tmp_path: Path) -> Path:
    return tm.int8_fc(tmp_path / "fc_int8.tflite")


def test_float_model_converts_unchanged_with_litert_reference(float_model: Path) -> None:
    converted, warnings = _convert(float_model, Dataset({None: ROWS}))
    assert warnings == []
    assert converted.model_format == "tflite"
    assert converted.source_format == "tflite"
    assert converted.model_bytes == float_model.read_bytes()
    assert converted.task == "other"
    assert converted.label_output is None
    assert set(converted.inputs) == {"input"}
    assert converted.inputs["input"].dtype == np.float32
    assert converted.inputs["input"].shape == (9, 4)
    assert set(converted.reference) == {"probabilities"}
    np.testing.assert_allclose(
        converted.reference["probabilities"], tm.expected_float(ROWS.astype(np.float32)), atol=1e-6
    )
    assert "ai-edge-litert" in converted.converter
    assert len(converted.source_sha256) == 64


def test_run_packaged_float_matches_numpy_and_reference(float_model: Path) -> None:
    converted, _ = _convert(float_model, Dataset({None: ROWS}))
    out = run_packaged(converted.model_bytes, "tflite", converted.inputs)
    np.testing.assert_allclose(
        out["probabilities"], tm.expected_float(converted.inputs["input"]), atol=1e-6
    )
    np.testing.assert_array_equal(out["probabilities"], converted.reference["probabilities"])


def test_describe_reports_dynamic_batch(float_model: Path, int8_model: Path) -> None:
    inputs, outputs = describe(float_model.read_bytes(), "tflite")
    assert inputs == (TensorSpec("input", "float32", (None, 4)),)
    assert outputs == (TensorSpec("probabilities", "float32", (None, 3)),)
    inputs, outputs = describe(int8_model.read_bytes(), "tflite")
    assert inputs == (TensorSpec("input_q", "int8", (None, 4)),)
    assert outputs == (TensorSpec("output_q", "int8", (None, 3)),)


def test_int8_model_quantizes_a_float_sample_and_says_so(int8_model: Path) -> None:
    converted, warnings = _convert(int8_model, Dataset({None: ROWS}))
    assert len(warnings) == 1
    assert "int8-quantized" in warnings[0]
    assert "zero point -3" in warnings[0]
    x_q = converted.inputs["input_q"]
    assert x_q.dtype == np.int8
    np.testing.assert_array_equal(x_q, tm.quantize_input(ROWS))
    out = run_packaged(converted.model_bytes, "tflite", converted.inputs)
    assert out["output_q"].dtype == np.int8
    # LiteRT's fixed-point requantization may round one step away from the real-number result.
    diff = np.abs(out["output_q"].astype(int) - tm.expected_int8(x_q).astype(int))
    assert diff.max() <= 1
    np.testing.assert_array_equal(out["output_q"], converted.reference["output_q"])


def test_int8_model_takes_an_int8_sample_as_is(int8_model: Path) -> None:
    x_q = tm.quantize_input(ROWS)
    converted, warnings = _convert(int8_model, Dataset({"input_q": x_q}))
    assert warnings == []
    np.testing.assert_array_equal(converted.inputs["input_q"], x_q)


def test_int8_input_rejects_values_that_do_not_fit(int8_model: Path) -> None:
    with pytest.raises(UsageError, match="do not fit in int8"):
        convert(int8_model, Dataset({None: np.full((2, 4), 300, dtype=np.int64)}), _ignore)


def test_fixed_batch_model_rejects_a_larger_sample(tmp_path: Path) -> None:
    path = tm.float_mlp(tmp_path / "fixed.tflite", dynamic_batch=False)
    with pytest.raises(UsageError, match=r"takes shape 1x4 .* sample has 9x4"):
        convert(path, Dataset({None: ROWS}), _ignore)
    converted, _ = _convert(path, Dataset({None: ROWS[:1]}))
    assert converted.inputs["input"].shape == (1, 4)


def test_sample_as_npz_must_name_the_input(float_model: Path) -> None:
    converted, _ = _convert(float_model, Dataset({"input": ROWS, "extra": ROWS}))
    assert set(converted.inputs) == {"input"}
    with pytest.raises(UsageError, match="lacks input"):
        convert(float_model, Dataset({"x": ROWS}), _ignore)


def _garbage(tmp_path: Path) -> bytes:
    return b"this is not a model, just text\n" * 4


def _onnx_bytes(tmp_path: Path) -> bytes:
    return constant_weight_mlp(tmp_path / "m.onnx").read_bytes()


def _truncated(tmp_path: Path) -> bytes:
    data = tm.float_mlp(tmp_path / "whole.tflite").read_bytes()
    return data[: len(data) // 2]


def _corrupted(tmp_path: Path) -> bytes:
    data = bytearray(tm.float_mlp(tmp_path / "whole.tflite").read_bytes())
    for i in range(16, len(data), 5):
        data[i] ^= 0xA5
    return bytes(data)


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda _: b"", "not a TFLite model"),
        (_garbage, "not a TFLite model"),
        (_onnx_bytes, "not a TFLite model"),
        (_truncated, "LiteRT cannot load"),
        (_corrupted, "LiteRT cannot load"),
    ],
    ids=["empty", "text", "onnx", "truncated", "corrupted"],
)
def test_files_that_are_not_tflite_are_conversion_errors(tmp_path, make, message) -> None:
    path = tmp_path / "model.tflite"
    path.write_bytes(make(tmp_path))
    with pytest.raises(ConversionError, match=message):
        convert_tflite(path, Dataset({None: ROWS}), _ignore)


def test_is_tflite_checks_the_file_identifier(float_model: Path) -> None:
    assert is_tflite(float_model.read_bytes())
    assert not is_tflite(b"TFL3")
    assert not is_tflite(b"\x00" * 16)


# The validation gate for .tflite files: the file ships as given, measured with LiteRT.


def _gate_build(keys, tmp_path: Path, model: Path, x: np.ndarray, labels=None, **extra):
    from packager.build import BuildOptions, build
    from packager.evaluate import LatencySettings

    np.save(tmp_path / "sample.npy", x[:10])
    np.save(tmp_path / "validation.npy", x)
    if labels is not None:
        np.save(tmp_path / "labels.npy", labels)
    tables: list[dict] = []
    [result] = build(
        BuildOptions(
            model=model,
            targets=("x86_64-generic",),
            keys=(keys.key("release"),),
            name="lite",
            version="1.0.0",
            sample=tmp_path / "sample.npy",
            validation=tmp_path / "validation.npy",
            labels=tmp_path / "labels.npy" if labels is not None else None,
            out=tmp_path / "dist",
            latency=LatencySettings(seconds=0.05, max_rounds=5, min_rounds=2, warmup=1),
            **extra,
        ),
        table=lambda _profile, report: tables.append(report),
    )
    return result, tables


def test_float_tflite_gate_reports_labelled_metrics_measured_with_litert(keys, tmp_path) -> None:
    x = np.random.default_rng(3).normal(size=(40, 4)).astype(np.float32)
    labels = tm.expected_float(x).argmax(axis=1)
    labels[:4] = (labels[:4] + 1) % 3  # four wrong answers: accuracy 0.9 exactly
    result, tables = _gate_build(keys, tmp_path, tm.float_mlp(tmp_path / "m.tflite"), x, labels)

    metrics = result.manifest.validation["metrics"]
    assert metrics["data"] == "validation" and metrics["rows"] == 40 and metrics["labels"]
    assert metrics["original"]["accuracy"] == pytest.approx(0.9)
    assert metrics["packaged"]["accuracy"] == pytest.approx(0.9)
    assert {"precision_macro", "recall_macro", "f1_macro"} <= set(metrics["packaged"])
    assert metrics["packaged"]["max_abs_diff"] == 0.0  # the same file as the original
    assert metrics["gate"] == {
        "measure": "accuracy drop",
        "value": 0.0,
        "max": 0.01,
        "passed": True,
    }
    [table] = tables
    [row] = table["candidates"]
    assert row["mode"] == "none" and row["verdict"] == "chosen"
    assert row["metrics"]["accuracy"] == pytest.approx(0.9)
    assert row["size"] == (tmp_path / "m.tflite").stat().st_size
    assert row["latency_ms"]["p50"] > 0
    assert "LiteRT" in result.manifest.quantization["reason"]


def test_int8_tflite_outputs_are_scored_as_real_numbers(keys, tmp_path) -> None:
    model = tm.int8_fc(tmp_path / "q.tflite")
    x = np.random.default_rng(4).normal(size=(30, 4)).astype(np.float32)
    codes = run_packaged(model.read_bytes(), "tflite", {"input_q": tm.quantize_input(x)})
    values = (codes["output_q"].astype(np.float64) - tm.INT8_OUT_ZP) * tm.INT8_OUT_SCALE
    labels = values.argmax(axis=1)
    labels[:3] = (labels[:3] + 1) % 3
    result, _ = _gate_build(keys, tmp_path, model, x, labels)
    metrics = result.manifest.validation["metrics"]
    assert metrics["packaged"]["accuracy"] == pytest.approx(0.9)
    assert metrics["original"]["accuracy"] == pytest.approx(0.9)


def test_tflite_gate_without_labels_measures_agreement(keys, tmp_path) -> None:
    x = np.random.default_rng(5).normal(size=(20, 4)).astype(np.float32)
    result, [table] = _gate_build(keys, tmp_path, tm.float_mlp(tmp_path / "m.tflite"), x)
    packaged = result.manifest.validation["metrics"]["packaged"]
    assert packaged["max_abs_diff"] == 0.0 and packaged["output_r2"] == 1.0
    assert table["measure"] == "1 - output R²"


def test_a_tflite_file_is_not_requantized(keys, tmp_path) -> None:
    x = np.random.default_rng(6).normal(size=(20, 4)).astype(np.float32)
    with pytest.raises(UsageError, match="ships as given"):
        _gate_build(keys, tmp_path, tm.float_mlp(tmp_path / "m.tflite"), x, quantize="static")
    assert not (tmp_path / "dist").exists()
