"""Float32 ONNX models made with the onnx helper API for the quantization tests, and their data.

Weights are drawn from a seeded generator, so every model is the same on every run.
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper


def _save(nodes, name, inputs, outputs, initializers, path: Path, opset: int = 17) -> Path:
    graph = helper.make_graph(nodes, name, inputs, outputs, initializer=initializers)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    onnx.save(model, path)
    return path


def mlp(
    path: Path,
    features: int = 64,
    hidden: int = 256,
    classes: int = 4,
    outlier: Optional[float] = None,
    seed: int = 0,
) -> Path:
    """logits = relu(x @ W1 + b1) @ W2 + b2, batch dynamic. ``outlier`` puts one huge weight in
    W1: per-tensor int8 then rounds every other weight of W1 to zero (a model int8 ruins)."""
    rng = np.random.default_rng(seed)
    w1 = rng.normal(0, 0.5, size=(features, hidden)).astype(np.float32)
    if outlier is not None:
        w1[0, 0] = outlier
    tensors = {
        "W1": w1,
        "b1": rng.normal(0, 0.1, size=hidden).astype(np.float32),
        "W2": rng.normal(0, 0.5, size=(hidden, classes)).astype(np.float32),
        "b2": np.zeros(classes, np.float32),
    }
    nodes = [
        helper.make_node("MatMul", ["x", "W1"], ["h0"]),
        helper.make_node("Add", ["h0", "b1"], ["h1"]),
        helper.make_node("Relu", ["h1"], ["h"]),
        helper.make_node("MatMul", ["h", "W2"], ["l0"]),
        helper.make_node("Add", ["l0", "b2"], ["logits"]),
    ]
    return _save(
        nodes,
        "mlp",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", features])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", classes])],
        [numpy_helper.from_array(v, k) for k, v in tensors.items()],
        path,
    )


def conv_net(
    path: Path, filters: int = 16, size: int = 8, classes: int = 10, seed: int = 0
) -> Path:
    """Conv 3x3 (padded) → Relu → Flatten → Gemm: a small image classifier, input [N,1,S,S]."""
    rng = np.random.default_rng(seed)
    tensors = {
        "cw": rng.normal(0, 0.3, size=(filters, 1, 3, 3)).astype(np.float32),
        "cb": rng.normal(0, 0.05, size=filters).astype(np.float32),
        "dw": rng.normal(0, 0.05, size=(filters * size * size, classes)).astype(np.float32),
        "db": np.zeros(classes, np.float32),
    }
    nodes = [
        helper.make_node("Conv", ["x", "cw", "cb"], ["c"], kernel_shape=[3, 3], pads=[1] * 4),
        helper.make_node("Relu", ["c"], ["r"]),
        helper.make_node("Flatten", ["r"], ["f"], axis=1),
        helper.make_node("Gemm", ["f", "dw", "db"], ["logits"]),
    ]
    return _save(
        nodes,
        "conv",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 1, size, size])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", classes])],
        [numpy_helper.from_array(v, k) for k, v in tensors.items()],
        path,
    )


def wide_conv(path: Path, cin: int = 16, cout: int = 32, size: int = 32, seed: int = 0) -> Path:
    """One wide 3x3 convolution. onnxruntime's int8 ConvInteger (dynamic quantization) runs it
    about five times slower than its float32 Conv on x86-64: a variant that must be rejected."""
    rng = np.random.default_rng(seed)
    tensors = {
        "w": rng.normal(0, 0.1, size=(cout, cin, 3, 3)).astype(np.float32),
        "b": np.zeros(cout, np.float32),
    }
    nodes = [helper.make_node("Conv", ["x", "w", "b"], ["y"], kernel_shape=[3, 3], pads=[1] * 4)]
    return _save(
        nodes,
        "wide",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", cin, size, size])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", cout, size, size])],
        [numpy_helper.from_array(v, k) for k, v in tensors.items()],
        path,
    )


def batchnorm_conv(path: Path, filters: int = 8, size: int = 8, seed: int = 0) -> Path:
    """Conv → BatchNormalization → Relu: the pre-pass's graph optimizer folds the BatchNorm."""
    rng = np.random.default_rng(seed)
    tensors = {
        "cw": rng.normal(0, 0.3, size=(filters, 1, 3, 3)).astype(np.float32),
        "scale": rng.uniform(0.5, 1.5, size=filters).astype(np.float32),
        "bias": rng.normal(0, 0.1, size=filters).astype(np.float32),
        "mean": rng.normal(0, 0.1, size=filters).astype(np.float32),
        "var": rng.uniform(0.5, 1.5, size=filters).astype(np.float32),
    }
    nodes = [
        helper.make_node("Conv", ["x", "cw"], ["c"], kernel_shape=[3, 3], pads=[1] * 4),
        helper.make_node("BatchNormalization", ["c", "scale", "bias", "mean", "var"], ["n"]),
        helper.make_node("Relu", ["n"], ["y"]),
    ]
    return _save(
        nodes,
        "bn",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 1, size, size])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", filters, size, size])],
        [numpy_helper.from_array(v, k) for k, v in tensors.items()],
        path,
    )


def rows(shape: tuple[int, ...], seed: int = 0, positive: bool = False) -> np.ndarray:
    """Seeded float32 input rows."""
    x = np.random.default_rng(seed).normal(size=shape).astype(np.float32)
    return np.abs(x) if positive else x


def predict(path: Path, x: np.ndarray) -> np.ndarray:
    """The float32 model's first output on ``x`` (to derive labels the original gets right)."""
    import onnxruntime as ort

    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return session.run(None, {session.get_inputs()[0].name: x})[0]


def constant_mlp(path: Path, features: int = 64, hidden: int = 256, classes: int = 10) -> Path:
    """An MLP whose weights sit in Constant nodes, large enough for int8 to pay off."""
    rng = np.random.default_rng(3)
    w1 = rng.normal(0, 0.2, size=(features, hidden)).astype(np.float32)
    w2 = rng.normal(0, 0.2, size=(hidden, classes)).astype(np.float32)
    nodes = [
        helper.make_node("Constant", [], ["w1"], value=numpy_helper.from_array(w1)),
        helper.make_node("Constant", [], ["w2"], value=numpy_helper.from_array(w2)),
        helper.make_node("MatMul", ["x", "w1"], ["h"]),
        helper.make_node("Relu", ["h"], ["hr"]),
        helper.make_node("MatMul", ["hr", "w2"], ["logits"]),
    ]
    return _save(
        nodes,
        "constant_mlp",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", features])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", classes])],
        [],
        path,
        opset=13,
    )
