"""packager/runner.py: the host runs ONNX and TFLite models through the device backends."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from packager.runner import BACKEND_FOR_FORMAT, backend_name, describe, packaged, run_packaged
from runtime.backends.litert import LiteRTBackend
from runtime.backends.onnx import OnnxBackend
from runtime.errors import ModelError, UsageError
from runtime.manifest import TensorSpec
from tests.packager import tflite_models as tm
from tests.packager.onnx_models import two_input_model

RNG = np.random.default_rng(11)


def test_each_format_runs_on_the_backend_a_device_uses() -> None:
    assert BACKEND_FOR_FORMAT == {"onnx": "onnxruntime", "tflite": "litert"}
    assert backend_name("tflite") == "litert"
    with pytest.raises(UsageError, match="unknown model format 'keras'"):
        backend_name("keras")


def test_onnx_model_runs_and_is_described(tmp_path: Path) -> None:
    data = two_input_model(tmp_path / "m.onnx").read_bytes()
    a = RNG.normal(size=(5, 4)).astype(np.float32)
    b = RNG.normal(size=(5, 3)).astype(np.float32)
    scale = np.array([3], dtype=np.int64)
    out = run_packaged(data, "onnx", {"a": a, "b": b, "scale": scale})
    w = np.arange(12, dtype=np.float32).reshape(4, 3) / 10
    np.testing.assert_allclose(out["y"], a @ w + b * 3, rtol=1e-6)
    inputs, outputs = describe(data, "onnx")
    assert inputs == (
        TensorSpec("a", "float32", (None, 4)),
        TensorSpec("b", "float32", (None, 3)),
        TensorSpec("scale", "int64", (1,)),
    )
    assert outputs == (TensorSpec("y", "float32", (None, 3)),)


def test_tflite_model_runs_and_is_described(tmp_path: Path) -> None:
    data = tm.float_mlp(tmp_path / "m.tflite").read_bytes()
    x = RNG.normal(size=(6, 4)).astype(np.float32)
    out = run_packaged(data, "tflite", {"input": x})
    np.testing.assert_allclose(out["probabilities"], tm.expected_float(x), atol=1e-6)
    assert describe(data, "tflite")[0] == (TensorSpec("input", "float32", (None, 4)),)


def test_packaged_keeps_one_backend_for_several_runs_then_cleans_up(tmp_path: Path) -> None:
    data = tm.int8_fc(tmp_path / "q.tflite").read_bytes()
    with packaged(data, "tflite") as backend:
        assert isinstance(backend, LiteRTBackend)
        for rows in (1, 4):
            x_q = tm.quantize_input(RNG.normal(size=(rows, 4)))
            out = backend.run({"input_q": x_q})["output_q"]
            assert np.abs(out.astype(int) - tm.expected_int8(x_q).astype(int)).max() <= 1
    onnx_data = two_input_model(tmp_path / "m.onnx").read_bytes()
    with packaged(onnx_data, "onnx") as backend:
        assert isinstance(backend, OnnxBackend)


@pytest.mark.parametrize("fmt", ["onnx", "tflite"])
def test_bytes_that_are_not_a_model_are_model_errors(fmt: str) -> None:
    with pytest.raises(ModelError, match="cannot load"):
        run_packaged(b"not a model", fmt, {})


def test_a_model_that_fails_on_the_inputs_is_a_model_error(tmp_path: Path) -> None:
    data = tm.float_mlp(tmp_path / "m.tflite").read_bytes()
    with pytest.raises(ModelError, match="litert failed"):
        run_packaged(data, "tflite", {"input": np.zeros((2, 4), np.float64)})
    onnx_data = two_input_model(tmp_path / "m.onnx").read_bytes()
    with pytest.raises(ModelError, match="onnxruntime failed"):
        run_packaged(onnx_data, "onnx", {"a": np.zeros((2, 4), np.float32)})
