"""runtime/backends/litert.py with real LiteRT on real .tflite files (float and int8)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from runtime.backends.base import open_backend
from runtime.backends.litert import (
    LiteRTBackend,
    interpreter_class,
    interpreter_version,
)
from runtime.errors import ModelError
from runtime.manifest import TensorSpec
from tests.packager import tflite_models as tm

RNG = np.random.default_rng(3)


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("tflite")
    return {
        "float": tm.float_mlp(folder / "float.tflite"),
        "fixed": tm.float_mlp(folder / "fixed.tflite", dynamic_batch=False),
        "int8": tm.int8_fc(folder / "int8.tflite"),
    }


def test_the_interpreter_is_ai_edge_litert() -> None:
    assert interpreter_class().__module__.startswith("ai_edge_litert")
    assert list(interpreter_version()) == ["ai-edge-litert"]


def test_open_backend_picks_litert(models: dict[str, Path]) -> None:
    backend = open_backend("litert", models["float"], threads=2)
    assert isinstance(backend, LiteRTBackend)
    assert backend.name == "litert"


def test_float_model_signature(models: dict[str, Path]) -> None:
    backend = LiteRTBackend(models["float"])
    assert backend.inputs == (TensorSpec("input", "float32", (None, 4)),)
    assert backend.outputs == (TensorSpec("probabilities", "float32", (None, 3)),)
    assert backend.input_quantization == {}


def test_fixed_model_signature(models: dict[str, Path]) -> None:
    backend = LiteRTBackend(models["fixed"])
    assert backend.inputs == (TensorSpec("input", "float32", (1, 4)),)
    assert backend.outputs == (TensorSpec("probabilities", "float32", (1, 3)),)


def test_int8_model_signature_and_quantization(models: dict[str, Path]) -> None:
    backend = LiteRTBackend(models["int8"])
    assert backend.inputs == (TensorSpec("input_q", "int8", (None, 4)),)
    assert backend.outputs == (TensorSpec("output_q", "int8", (None, 3)),)
    scale, zero_point = backend.input_quantization["input_q"]
    assert scale == pytest.approx(tm.INT8_IN_SCALE)
    assert zero_point == tm.INT8_IN_ZP


def test_float_model_runs_batches_of_any_size(models: dict[str, Path]) -> None:
    backend = LiteRTBackend(models["float"])
    for rows in (1, 5, 17, 2, 5, 1):
        x = RNG.normal(size=(rows, 4)).astype(np.float32)
        out = backend.run({"input": x})
        assert set(out) == {"probabilities"}
        assert out["probabilities"].shape == (rows, 3)
        np.testing.assert_allclose(out["probabilities"], tm.expected_float(x), atol=1e-6)


def test_int8_model_runs_batches_of_any_size(models: dict[str, Path]) -> None:
    backend = LiteRTBackend(models["int8"])
    for rows in (3, 1, 8):
        x_q = tm.quantize_input(RNG.normal(size=(rows, 4)))
        out = backend.run({"input_q": x_q})["output_q"]
        assert out.dtype == np.int8
        assert out.shape == (rows, 3)
        assert np.abs(out.astype(int) - tm.expected_int8(x_q).astype(int)).max() <= 1


def test_outputs_are_copies_not_views_of_the_interpreter(models: dict[str, Path]) -> None:
    backend = LiteRTBackend(models["float"])
    first = backend.run({"input": np.zeros((2, 4), np.float32)})["probabilities"]
    kept = first.copy()
    backend.run({"input": np.ones((2, 4), np.float32)})
    np.testing.assert_array_equal(first, kept)


@pytest.mark.parametrize(
    ("feeds", "message"),
    [
        ({}, "missing input"),
        ({"other": np.zeros((1, 4), np.float32)}, "missing input"),
        ({"input": np.zeros((2, 4), np.float64)}, "litert failed"),
        ({"input": np.zeros((2, 5), np.float32)}, "litert failed"),
        ({"input": np.zeros((2, 4, 1), np.float32)}, "litert failed"),
    ],
    ids=["nothing", "wrong-name", "float64", "wrong-width", "wrong-rank"],
)
def test_bad_feeds_are_model_errors_and_the_backend_recovers(
    models: dict[str, Path], feeds: dict[str, np.ndarray], message: str
) -> None:
    backend = LiteRTBackend(models["float"])
    with pytest.raises(ModelError, match=message):
        backend.run(feeds)
    x = RNG.normal(size=(3, 4)).astype(np.float32)
    np.testing.assert_allclose(
        backend.run({"input": x})["probabilities"], tm.expected_float(x), atol=1e-6
    )


def test_fixed_batch_cannot_be_resized(models: dict[str, Path]) -> None:
    backend = LiteRTBackend(models["fixed"])
    with pytest.raises(ModelError, match="litert failed"):
        backend.run({"input": np.zeros((3, 4), np.float32)})
    x = RNG.normal(size=(1, 4)).astype(np.float32)
    np.testing.assert_allclose(
        backend.run({"input": x})["probabilities"], tm.expected_float(x), atol=1e-6
    )


@pytest.mark.parametrize("content", [b"", b"not a model", b"\x1c\x00\x00\x00TFL3" + b"\x00" * 8])
def test_files_litert_cannot_load_are_model_errors(tmp_path: Path, content: bytes) -> None:
    path = tmp_path / "bad.tflite"
    path.write_bytes(content)
    with pytest.raises(ModelError, match=r"LiteRT cannot load bad\.tflite"):
        LiteRTBackend(path)
