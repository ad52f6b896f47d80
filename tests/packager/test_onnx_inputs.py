"""ONNX models as third parties ship them: dynamic dims, external data, old opsets."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from packager.convert.from_onnx import convert_onnx, load_onnx
from packager.data import Dataset
from packager.inspect import inspect_bundle
from runtime.errors import ConversionError, UsageError
from tests.packager.onnx_models import constant_weight_mlp


def dynamic_model(path, opset=17):
    """y = x @ W with every dimension of x symbolic."""
    w = numpy_helper.from_array(np.eye(4, 2, dtype=np.float32), "W")
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "W"], ["y"])],
        "dyn",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", "f"])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n", 2])],
        initializer=[w],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = 7
    onnx.save(model, path)
    return path


def sample(rows=5, cols=4):
    return Dataset({None: np.random.default_rng(0).normal(size=(rows, cols))})


def test_dynamic_feature_dim_is_fixed_from_the_sample(tmp_path):
    converted = convert_onnx(dynamic_model(tmp_path / "d.onnx"), sample())
    model = onnx.load_from_string(converted.model_bytes)
    dims = model.graph.input[0].type.tensor_type.shape.dim
    assert not dims[0].HasField("dim_value")  # the batch stays dynamic
    assert dims[1].dim_value == 4


def test_input_shape_option_fixes_every_dim(tmp_path):
    converted = convert_onnx(dynamic_model(tmp_path / "d.onnx"), sample(), {"x": (5, 4)})
    dims = onnx.load_from_string(converted.model_bytes).graph.input[0].type.tensor_type.shape.dim
    assert [d.dim_value for d in dims] == [5, 4]


@pytest.mark.parametrize(
    ("shapes", "message"),
    [({"nope": (1, 4)}, "no input 'nope'"), ({"x": (1, 4, 4)}, "rank 2")],
)
def test_bad_input_shape_is_a_usage_error(tmp_path, shapes, message):
    with pytest.raises(UsageError, match=message):
        convert_onnx(dynamic_model(tmp_path / "d.onnx"), sample(), shapes)


def test_sample_that_contradicts_a_fixed_dim(tmp_path):
    path = tmp_path / "m.onnx"
    constant_weight_mlp(path, features=8)
    with pytest.raises(UsageError, match="fixed at 8, not 5"):
        convert_onnx(path, sample(cols=5))


def test_external_data_is_inlined_into_one_file(tmp_path, keys):
    from packager.build import BuildOptions, build

    model = onnx.load(str(dynamic_model(tmp_path / "src.onnx")))
    folder = tmp_path / "shipped"
    folder.mkdir()
    onnx.save(
        model,
        str(folder / "m.onnx"),
        save_as_external_data=True,
        all_tensors_to_one_file=True,
        location="weights.bin",
        size_threshold=0,
    )
    assert (folder / "weights.bin").exists()
    np.save(tmp_path / "x.npy", sample().single())
    [result] = build(
        BuildOptions(
            model=folder / "m.onnx",
            targets=("x86_64-generic",),
            keys=(keys.key("release"),),
            name="ext",
            version="1.0.0",
            sample=tmp_path / "x.npy",
            out=tmp_path / "out",
        )
    )
    doc = inspect_bundle(result.path)
    assert next(f["path"] for f in doc["manifest"]["files"]) == "model.onnx"
    (folder / "weights.bin").unlink()
    with pytest.raises(ConversionError, match="external data"):
        load_onnx(folder / "m.onnx")


def test_opset_below_11_is_refused(tmp_path):
    with pytest.raises(ConversionError, match="opset 10"):
        load_onnx(dynamic_model(tmp_path / "old.onnx", opset=10))


def test_not_onnx(tmp_path):
    (tmp_path / "junk.onnx").write_bytes(b"\x00garbage" * 10)
    with pytest.raises(ConversionError):
        load_onnx(tmp_path / "junk.onnx")
