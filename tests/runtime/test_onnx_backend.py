"""The onnxruntime backend returns every output under its own name, whatever their number, and
gives the same answers through the C++ session as through onnxruntime's public ``run``."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper

from runtime.backends.onnx import OnnxBackend


def _fan_out(path: Path, outputs: int) -> Path:
    """x -> outputs y0..yN-1 where y_i = x * (i + 1), declared in reverse name order so that a
    backend that sorted names instead of keeping the model's order would be caught."""
    names = [f"y{i}" for i in reversed(range(outputs))]
    nodes = []
    for name in names:
        factor = float(int(name[1:]) + 1)
        scale = helper.make_tensor(f"k_{name}", TensorProto.FLOAT, [], [factor])
        nodes.append(helper.make_node("Constant", [], [f"k_{name}"], value=scale))
        nodes.append(helper.make_node("Mul", ["x", f"k_{name}"], [name]))
    graph = helper.make_graph(
        nodes,
        "fan_out",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [None, 3])],
        [helper.make_tensor_value_info(n, TensorProto.FLOAT, [None, 3]) for n in names],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    onnx.save(model, path)
    return path


@pytest.mark.parametrize("outputs", [1, 2, 3, 5])
def test_every_output_comes_back_under_its_name(tmp_path, outputs):
    path = _fan_out(tmp_path / "m.onnx", outputs)
    backend = OnnxBackend(path)
    x = np.arange(6, dtype=np.float32).reshape(2, 3)
    got = backend.run({"x": x})
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    names = [o.name for o in session.get_outputs()]
    assert list(got) == names == [f"y{i}" for i in reversed(range(outputs))]
    for name, want in zip(names, session.run(None, {"x": x})):
        np.testing.assert_array_equal(got[name], want)
        np.testing.assert_array_equal(got[name], x * (int(name[1:]) + 1))


def test_the_public_run_gives_the_same_answers_as_the_cpp_session(tmp_path):
    backend = OnnxBackend(_fan_out(tmp_path / "m.onnx", 2))
    x = np.ones((1, 3), dtype=np.float32)
    direct = backend.run({"x": x})
    backend._call = backend._public_run  # an onnxruntime without the C++ session attribute
    public = backend.run({"x": x})
    assert list(direct) == list(public)
    for name in direct:
        np.testing.assert_array_equal(direct[name], public[name])
